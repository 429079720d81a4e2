/**
 * `cblas_sgemm` through Deno's FFI, free of TensorFlow.js so that helper threads (src/cores)
 * can load it: src/tensor/blas.ts opens the library for the main thread; a helper opens the
 * same one (already loaded: the same code and state) for its share of the LM head and of
 * attention (src/tensor/lane.ts `headBlocks`, `attendHeads`).
 */

/** The symbol as Deno.dlopen declares it. */
export const CBLAS_SGEMM = {
  parameters: [
    "i32", // order
    "i32", // transA
    "i32", // transB
    "i32", // M
    "i32", // N
    "i32", // K
    "f32", // alpha
    "pointer", // A
    "i32", // lda
    "pointer", // B
    "i32", // ldb
    "f32", // beta
    "pointer", // C
    "i32", // ldc
  ],
  result: "void",
} as const;

const CBLAS_ROW_MAJOR = 101;
const CBLAS_NO_TRANS = 111;
const CBLAS_TRANS = 112;

/** Row-major `C[M, N] = alpha · op(A) · op(B)` on raw addresses (op: transposed when asked). */
export type Sgemm = (
  transA: boolean,
  transB: boolean,
  M: number,
  N: number,
  K: number,
  alpha: number,
  a: bigint,
  lda: number,
  b: bigint,
  ldb: number,
  c: bigint,
  ldc: number,
) => void;

type CblasSgemm = Deno.DynamicLibrary<
  { cblas_sgemm: typeof CBLAS_SGEMM }
>["symbols"]["cblas_sgemm"];

/** An Sgemm over a loaded `cblas_sgemm` symbol. */
export function sgemmOf(cblasSgemm: CblasSgemm): Sgemm {
  const ptr = (address: bigint) => Deno.UnsafePointer.create(address);
  return (transA, transB, M, N, K, alpha, a, lda, b, ldb, c, ldc) =>
    cblasSgemm(
      CBLAS_ROW_MAJOR,
      transA ? CBLAS_TRANS : CBLAS_NO_TRANS,
      transB ? CBLAS_TRANS : CBLAS_NO_TRANS,
      M,
      N,
      K,
      alpha,
      ptr(a),
      lda,
      ptr(b),
      ldb,
      0,
      ptr(c),
      ldc,
    );
}

const opened = new Map<string, Sgemm>();

/** The Sgemm of the library `name` (opened once per thread; a helper's way in). */
export function openSgemm(name: string): Sgemm {
  let f = opened.get(name);
  if (!f) {
    f = sgemmOf(Deno.dlopen(name, { cblas_sgemm: CBLAS_SGEMM }).symbols.cblas_sgemm);
    opened.set(name, f);
  }
  return f;
}
