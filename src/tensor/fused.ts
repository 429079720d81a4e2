/**
 * Fused kernels for the OPT forward in its transposed layout (`[hidden, tokens]`, see
 * src/model/opt.ts), where TensorFlow.js' WASM backend is slow: reductions and broadcasts over
 * axis 0 (it transposes), batched matMuls (a scalar loop, ~2 GFLOP/s), gathers.
 *
 * They run a small SIMD module (`wasm/fused_kernel.ts`) instantiated on the backend's own
 * memory: it reads tensors where tfjs wrote them and writes into tensors allocated here
 * (`heapTensor`: on the heap, left as they are, since each kernel writes its output whole), so no
 * data is copied between JS and the WASM heap. Each function returns null (or falls back, for
 * `columnLogSumExp`) on other backends; the model then uses tfjs ops with the same semantics.
 *
 * - `columnLogSumExp`: the LM head's log-sum-exp over the vocabulary of `[V, P]` logits, in two
 *   streaming passes (column max, sum of exp(logit - max)) with no `[V, P]` transpose/temporary.
 * - `fusedAttention`: scores, mask, softmax and weighted sum for every (row, head).
 * - `layerNormTransposed`, `embedTransposed`: LayerNorm over axis 0; embeddings as columns.
 */
import * as tf from "@tensorflow/tfjs-core";
import { activeBackend } from "./backend.ts";
import { type FusedKernels, instantiateFusedKernels } from "./wasm/fused_kernels.ts";
import { addressOf, Command, type Helper, helpers, waitAll } from "../cores/mod.ts";
import {
  ATTENTION_JOB,
  type AttentionJob,
  laneFitsAttention,
  laneFitsHeads,
  ownLane,
} from "./lane.ts";
import { heapAddress, nativeMatMul, shareBlasWork } from "./blas.ts";

interface WasmBackendInternals {
  dataIdMap: { get(id: object): { memoryOffset: number } | undefined };
  wasm: { asm?: { memory?: WebAssembly.Memory } };
}

let cached:
  | { backend: tf.KernelBackend; exports: FusedKernels; memory: WebAssembly.Memory }
  | null;

function kernel(): typeof cached {
  if (activeBackend() !== "wasm") return null;
  const backend = tf.backend();
  if (cached?.backend === backend) return cached;
  const memory = (backend as unknown as WasmBackendInternals).wasm.asm?.memory;
  if (!(memory instanceof WebAssembly.Memory)) return null;
  cached = { backend, exports: instantiateFusedKernels(memory), memory };
  return cached;
}

/**
 * A float32 tensor on the WASM heap whose contents are whatever the memory held: for outputs a
 * kernel writes whole and for scratch (zero-filling them first was ~1% of a forward).
 */
function heapTensor(shape: number[]): tf.Tensor {
  const backend = tf.backend() as unknown as {
    makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  };
  return tf.engine().makeTensorFromTensorInfo(backend.makeOutput(shape, "float32"));
}

function offsetOf(t: tf.Tensor): number {
  const b = tf.backend() as unknown as WasmBackendInternals;
  const info = b.dataIdMap.get(t.dataId);
  if (!info) throw new Error("fused kernels: tensor is not on the wasm backend");
  return info.memoryOffset;
}

/**
 * Column log-sum-exp of LM-head logits `[V, P]` (vocabulary rows, one column per position):
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
  // Scratch on the backend heap: s (P doubles), the exp constants (208 bytes), m (P floats).
  const scratch = heapTensor([3 * P + 54]);
  try {
    const L = offsetOf(logits);
    let base = offsetOf(scratch);
    if (base % 8 !== 0) base += 4; // the spare float keeps s 8-byte aligned
    const s = base, constants = base + 8 * P, m = constants + 208;
    k.exports.colMax(L, V, P, m);
    k.exports.colSumExp(L, V, P, m, constants, s);
    const maxes = new Float32Array(k.memory.buffer, m, P);
    const sums = new Float64Array(k.memory.buffer, s, P);
    const out = new Float64Array(P);
    for (let p = 0; p < P; p++) out[p] = maxes[p] + Math.log(sums[p]);
    return out;
  } finally {
    scratch.dispose();
  }
}

/** How `fusedAttention` runs: scale of q · k, and whether it may use the native matMul. */
export interface AttentionOptions {
  /** Multiplies q · k (OPT: hd^-0.5, applied to q there); 1 when absent. */
  scale?: number;
  /** Use OpenBLAS for the two products when it is on (default); false: the WASM kernel only. */
  native?: boolean;
}

/**
 * Causal self-attention in the transposed layout, fused (scores, mask, softmax, weighted sum)
 * on the WASM heap: q, k, v `[H * hd, B * S]`, keyMask an int32 `[B * S]` (1 = real token).
 * Returns the context `[H * hd, B * S]`, ready for out_proj, or null when the backend is not
 * WASM (the caller then uses tfjs ops). No `[B, H, S, S]` tensors or head transposes are made;
 * TensorFlow.js runs batched matMuls on a scalar path (~2 GFLOP/s).
 *
 * With the native matMul (and S up to ~1400, what a thread's lane holds), each (row, head) is
 * two OpenBLAS products read and written in place (`scale` · q_h^T k_h, then v_h · p^T) around
 * the `attentionProbs` kernel, the pairs taken in turn by every thread: about 3x faster than the
 * WASM kernel. Otherwise the `attention` kernel does it all, its batch rows shared among the
 * threads (src/cores).
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
  { scale = 1, native = true }: AttentionOptions = {},
): tf.Tensor2D | null {
  const kern = kernel();
  if (!kern) return null;
  const [D, N] = q.shape;
  if (D !== H * hd || N !== B * S || keyMask.size !== N || keyMask.dtype !== "int32") {
    throw new Error(`fusedAttention: shapes [${q.shape}] for B=${B} S=${S} H=${H} hd=${hd}`);
  }
  if (native && nativeMatMul()?.enabled && laneFitsHeads(S)) {
    return nativeAttention(q, k, v, keyMask, { B, S, H, hd }, scale);
  }
  if (scale === 1) return kernelAttention(kern, q, k, v, keyMask, { B, S, H, hd });
  const scaled = tf.mul(q, scale) as tf.Tensor2D;
  try {
    return kernelAttention(kern, scaled, k, v, keyMask, { B, S, H, hd });
  } finally {
    scaled.dispose();
  }
}

interface AttentionShape {
  B: number;
  S: number;
  H: number;
  hd: number;
}

/**
 * fusedAttention through OpenBLAS: every thread takes the next (row, head) from the shared
 * counter and computes it in its own lane (src/tensor/lane.ts `attendHeads`). The helpers join
 * when they can make OpenBLAS calls of their own (one OpenBLAS thread per call); a (row, head)
 * is computed the same way on any thread, so the bits do not depend on the thread count.
 */
function nativeAttention(
  q: tf.Tensor2D,
  k: tf.Tensor2D,
  v: tf.Tensor2D,
  keyMask: tf.Tensor1D,
  { B, S, H, hd }: AttentionShape,
  scale: number,
): tf.Tensor2D {
  const out = heapTensor([H * hd, B * S]) as tf.Tensor2D;
  // Addresses after the allocation: an allocation may grow (move) the heap.
  const job: AttentionJob = {
    q: heapAddress(q),
    k: heapAddress(k),
    v: heapAddress(v),
    keyMask: heapAddress(keyMask),
    out: heapAddress(out),
    B,
    S,
    H,
    hd,
    scale,
  };
  try {
    shareBlasWork(
      Command.AttendHeads,
      ATTENTION_JOB,
      job,
      (counter, gemm) => ownLane().attendHeads(job, counter, gemm),
    );
  } catch (e) {
    out.dispose();
    throw e;
  }
  return out;
}

/** fusedAttention by the WASM `attention` kernel (q already scaled), rows shared by threads. */
function kernelAttention(
  kern: NonNullable<typeof cached>,
  q: tf.Tensor2D,
  k: tf.Tensor2D,
  v: tf.Tensor2D,
  keyMask: tf.Tensor1D,
  { B, S, H, hd }: AttentionShape,
): tf.Tensor2D {
  const [D, N] = q.shape;
  const out = heapTensor([D, N]) as tf.Tensor2D;
  const scratch = heapTensor([S * S + 3 * hd * S]);
  // Batch rows are shared among the threads (src/cores): each (row, head) is computed alone,
  // the same way on any thread, so the bits do not depend on the thread count.
  const pool = laneFitsAttention(S, hd) ? helpers() : [];
  const share = Math.ceil(B / (pool.length + 1));
  const posted: Helper[] = [];
  let failure: unknown;
  try {
    const base = addressOf(new Uint8Array(kern.memory.buffer));
    const at = (t: tf.Tensor) => Number(base) + offsetOf(t);
    pool.forEach((helper, i) => {
      const bFrom = Math.min(B, share * (i + 1)), bTo = Math.min(B, share * (i + 2));
      if (bFrom >= bTo) return;
      helper.args.set([at(q), at(k), at(v), at(keyMask), at(out), B, S, H, hd, bFrom, bTo]);
      helper.post(Command.Attention);
      posted.push(helper);
    });
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
      0,
      Math.min(B, share),
    );
  } catch (e) {
    failure = e;
  }
  // Every helper must be idle before the tensors it writes are freed; a failure anywhere frees
  // the output too.
  try {
    waitAll(posted);
  } catch (e) {
    failure ??= e;
  }
  scratch.dispose();
  if (failure !== undefined) {
    out.dispose();
    throw failure;
  }
  return out;
}

/**
 * Token + position embeddings straight into the transposed layout: `[E, N]` with column n =
 * tok[ids[n]] + pos[rows[n]], or null when the backend is not WASM. Replaces two gathers, an
 * add and a transpose. Throws on an id or row outside its table.
 */
export function embedTransposed(
  tok: tf.Tensor2D,
  pos: tf.Tensor2D,
  ids: Int32Array,
  rows: Int32Array,
): tf.Tensor2D | null {
  const kern = kernel();
  if (!kern) return null;
  const [V, E] = tok.shape, [R, E2] = pos.shape, N = ids.length;
  if (E !== E2 || rows.length !== N) throw new Error("embedTransposed: shapes do not match");
  for (let n = 0; n < N; n++) {
    if (!(ids[n] >= 0 && ids[n] < V)) throw new RangeError(`token id ${ids[n]} not in [0, ${V})`);
    if (!(rows[n] >= 0 && rows[n] < R)) {
      throw new RangeError(`position row ${rows[n]} not in [0, ${R})`);
    }
  }
  const out = heapTensor([E, N]) as tf.Tensor2D;
  const ti = tf.tensor1d(ids, "int32"), tr = tf.tensor1d(rows, "int32");
  try {
    kern.exports.embedT(
      offsetOf(tok),
      offsetOf(pos),
      offsetOf(ti),
      offsetOf(tr),
      N,
      E,
      offsetOf(out),
    );
  } finally {
    ti.dispose();
    tr.dispose();
  }
  return out;
}

/**
 * Columns `cols` of x `[D, N]` as a new `[D, P]` tensor, or null when the backend is not WASM
 * (tfjs' gather along axis 1 took 7 ms for the LM head's 1008 of 1024 columns; this, 0.2 ms).
 * Throws on a column outside [0, N).
 */
export function gatherColumns(x: tf.Tensor2D, cols: Int32Array): tf.Tensor2D | null {
  const kern = kernel();
  if (!kern) return null;
  const [D, N] = x.shape, P = cols.length;
  for (const c of cols) {
    if (!(c >= 0 && c < N)) throw new RangeError(`column ${c} not in [0, ${N})`);
  }
  const out = heapTensor([D, P]) as tf.Tensor2D;
  const tc = tf.tensor1d(cols, "int32");
  try {
    kern.exports.gatherColumns(offsetOf(x), D, N, offsetOf(tc), P, offsetOf(out));
  } finally {
    tc.dispose();
  }
  return out;
}

/**
 * LayerNorm over axis 0 of `[D, N]` (torch semantics, biased variance), weight and bias `[D, 1]`,
 * in one kernel call; null when the backend is not WASM.
 */
export function layerNormTransposed(
  x: tf.Tensor2D,
  weight: tf.Tensor,
  bias: tf.Tensor,
  eps: number,
): tf.Tensor2D | null {
  const kern = kernel();
  if (!kern) return null;
  const [D, N] = x.shape;
  if (weight.size !== D || bias.size !== D) throw new Error("layerNormTransposed: shapes");
  const out = heapTensor([D, N]) as tf.Tensor2D;
  const scratch = heapTensor([2 * N]);
  try {
    kern.exports.layerNormT(
      offsetOf(x),
      D,
      N,
      offsetOf(weight),
      offsetOf(bias),
      eps,
      offsetOf(out),
      offsetOf(scratch),
    );
  } finally {
    scratch.dispose();
  }
  return out;
}

/**
 * In place on `y` `[D, N]`: y += bias `[D, 1]` (per row), then relu when asked. Only for a
 * tensor the caller just created and nobody else holds (a matMul output): it avoids two more
 * `[D, N]` tensors per linear. Returns false (nothing done) when the backend is not WASM.
 */
export function addBiasInPlace(y: tf.Tensor2D, bias: tf.Tensor, relu: boolean): boolean {
  const kern = kernel();
  if (!kern) return false;
  const [D, N] = y.shape;
  if (bias.size !== D || y.dtype !== "float32") throw new Error("addBiasInPlace: shapes");
  kern.exports.biasActT(offsetOf(y), D, N, offsetOf(bias), relu ? 1 : 0);
  return true;
}
