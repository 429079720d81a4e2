/**
 * Column log-sum-exp of LM-head logits `[V, P]` (vocabulary rows, one column per position), the
 * layout `W · Hᵀ` produces in the transposed forward (src/model/opt.ts).
 *
 * On the WASM backend this runs a small SIMD kernel (`wasm/head_kernel.ts`) instantiated on
 * the backend's own memory: it reads the logits where the matMul wrote them, in two streaming
 * passes (column max, then the sum of exp(logit - max)), with no transpose, no broadcast and no
 * `[V, P]` temporaries. TensorFlow.js would need a `[V, P]` transpose (its reductions and
 * broadcasts over a non-inner axis are slow) plus three `[V, P]` intermediates.
 */
import * as tf from "@tensorflow/tfjs-core";
import { activeBackend } from "./backend.ts";
import { HEAD_KERNEL_WASM_BASE64 } from "./wasm/head_kernel_wasm.ts";

interface Exports {
  colMax(L: number, V: number, P: number, m: number): void;
  colSumExp(L: number, V: number, P: number, m: number, acc: number, s: number): void;
  attention(
    q: number,
    k: number,
    v: number,
    keyMask: number,
    out: number,
    B: number,
    S: number,
    H: number,
    hd: number,
    scratch: number,
  ): void;
}

interface WasmBackendInternals {
  dataIdMap: { get(id: object): { memoryOffset: number } | undefined };
  wasm: { asm?: { memory?: WebAssembly.Memory } };
}

let cached: { backend: tf.KernelBackend; exports: Exports; memory: WebAssembly.Memory } | null;

function kernel(): typeof cached {
  if (activeBackend() !== "wasm") return null;
  const backend = tf.backend();
  if (cached?.backend === backend) return cached;
  const memory = (backend as unknown as WasmBackendInternals).wasm.asm?.memory;
  if (!(memory instanceof WebAssembly.Memory)) return null;
  const bytes = Uint8Array.from(atob(HEAD_KERNEL_WASM_BASE64), (ch) => ch.charCodeAt(0));
  const instance = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { memory } });
  cached = { backend, exports: instance.exports as unknown as Exports, memory };
  return cached;
}

function offsetOf(t: tf.Tensor): number {
  const b = tf.backend() as unknown as WasmBackendInternals;
  const info = b.dataIdMap.get(t.dataId);
  if (!info) throw new Error("head kernel: tensor is not on the wasm backend");
  return info.memoryOffset;
}

/**
 * lse[p] = log sum_v exp(logits[v, p]) for a float32 `[V, P]` tensor, in float64. NaN for a
 * column that holds a NaN (or only -Infinity).
 */
export function columnLogSumExp(logits: tf.Tensor2D): Float64Array {
  const [V, P] = logits.shape;
  const k = kernel();
  if (!k) {
    const lse = tf.tidy(() => tf.logSumExp(tf.transpose(logits), 1));
    const out = Float64Array.from(lse.dataSync());
    lse.dispose();
    return out;
  }
  // Scratch on the backend heap: m (P floats), acc (P floats), s (P doubles).
  const scratch = tf.zeros([4 * P + 2], "float32");
  try {
    const L = offsetOf(logits);
    let base = offsetOf(scratch);
    if (base % 8 !== 0) base += 4; // the two spare floats keep s 8-byte aligned
    const m = base, acc = base + 4 * P, s = base + 8 * P;
    k.exports.colMax(L, V, P, m);
    k.exports.colSumExp(L, V, P, m, acc, s);
    const maxes = new Float32Array(k.memory.buffer, m, P);
    const sums = new Float64Array(k.memory.buffer, s, P);
    const out = new Float64Array(P);
    for (let p = 0; p < P; p++) out[p] = maxes[p] + Math.log(sums[p]);
    return out;
  } finally {
    scratch.dispose();
  }
}

/**
 * Causal self-attention in the transposed layout, fused (scores, mask, softmax, weighted sum)
 * on the WASM heap: q, k, v `[H * hd, B * S]` (q already scaled), keyMask an int32 `[B * S]`
 * tensor (1 = real token). Returns the context `[H * hd, B * S]`, ready for out_proj, or null
 * when the backend is not WASM (the caller then uses tfjs ops). No `[B, H, S, S]` tensors or
 * head transposes are made; TensorFlow.js runs batched matMuls on a scalar path (~2 GFLOP/s).
 */
export function fusedAttention(
  q: tf.Tensor2D,
  k: tf.Tensor2D,
  v: tf.Tensor2D,
  keyMask: tf.Tensor1D,
  B: number,
  S: number,
  H: number,
  hd: number,
): tf.Tensor2D | null {
  const kern = kernel();
  if (!kern) return null;
  const [D, N] = q.shape;
  if (D !== H * hd || N !== B * S || keyMask.size !== N || keyMask.dtype !== "int32") {
    throw new Error(`fusedAttention: shapes [${q.shape}] for B=${B} S=${S} H=${H} hd=${hd}`);
  }
  const out = tf.zeros([D, N], "float32") as tf.Tensor2D;
  const scratch = tf.zeros([S * S + 3 * hd * S], "float32");
  try {
    kern.exports.attention(
      offsetOf(q),
      offsetOf(k),
      offsetOf(v),
      offsetOf(keyMask),
      offsetOf(out),
      B,
      S,
      H,
      hd,
      offsetOf(scratch),
    );
  } finally {
    scratch.dispose();
  }
  return out;
}
