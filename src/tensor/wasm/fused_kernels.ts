/**
 * The fused kernels (`fused_kernel.ts`, built by `build.ts`) as a compiled module, and the types
 * of its exports. The module imports its memory (`env.memory`): src/tensor/fused.ts instantiates
 * it on the TensorFlow.js WASM heap, src/tensor/lane.ts on a thread's own lane memory. Free of
 * TensorFlow.js, so that helper threads can load it.
 */
import { FUSED_KERNEL_WASM_BASE64 } from "./fused_kernel_wasm.ts";

/** The kernels' exports: byte offsets into the memory they run on, and sizes. */
export interface FusedKernels {
  colMax(L: number, V: number, P: number, m: number): void;
  colSumExp(L: number, V: number, P: number, m: number, k: number, s: number): void;
  embedT(
    tok: number,
    pos: number,
    ids: number,
    rows: number,
    N: number,
    E: number,
    out: number,
  ): void;
  layerNormT(
    x: number,
    D: number,
    N: number,
    w: number,
    b: number,
    eps: number,
    out: number,
    scratch: number,
  ): void;
  biasActT(y: number, D: number, N: number, b: number, relu: number): void;
  gatherColumns(x: number, D: number, N: number, cols: number, P: number, out: number): void;
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
    bFrom: number,
    bTo: number,
  ): void;
  attentionProbs(scores: number, S: number, mrow: number, k: number): void;
  /** 1 when the kernels' multiply-adds are fused on this CPU (see fused_kernel.ts). */
  fusesMultiplyAdd(): number;
}

let compiled: WebAssembly.Module | undefined;

/** The kernels instantiated on `memory` (the module is compiled once per thread). */
export function instantiateFusedKernels(memory: WebAssembly.Memory): FusedKernels {
  try {
    compiled ??= new WebAssembly.Module(
      Uint8Array.from(atob(FUSED_KERNEL_WASM_BASE64), (ch) => ch.charCodeAt(0)),
    );
  } catch (e) {
    throw new Error(
      `the fused kernels do not compile here (${e instanceof Error ? e.message : e}): they ` +
        "need WebAssembly SIMD and relaxed SIMD (V8 11.4+, i.e. Deno 1.35+); upgrade Deno",
    );
  }
  return new WebAssembly.Instance(compiled, { env: { memory } }).exports as unknown as FusedKernels;
}

let fuses: boolean | undefined;

/**
 * Whether the kernels' multiply-adds (relaxed SIMD) are fused on this CPU: it decides their last
 * bits, so it is part of a process' matMul identity (src/tensor/blas.ts).
 */
export function kernelsFuseMultiplyAdd(): boolean {
  fuses ??= instantiateFusedKernels(new WebAssembly.Memory({ initial: 1, maximum: 1 }))
    .fusesMultiplyAdd() === 1;
  return fuses;
}
