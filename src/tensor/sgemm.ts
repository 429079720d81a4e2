/**
 * `cblas_sgemm` through Deno's FFI, free of TensorFlow.js so that helper threads (src/cores)
 * can load it: src/tensor/blas.ts opens the library for the main thread; a helper opens the
 * same one (already loaded: the same code and state) for its share of the matMuls
 * (`gemmBlocks`), the LM head and attention (src/tensor/lane.ts `headBlocks`, `attendHeads`).
 *
 * Every call runs on its calling thread alone (src/tensor/blas.ts loads the library with one
 * thread), on a block whose shape depends on the matMul's shape only (`gemmRows`): the blocks,
 * not the library's threads, are what the threads share, so the thread count never changes a
 * bit of the result.
 */
import type { JobOf } from "./lane.ts";

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

/**
 * A matMul `C[i] = op(A[i]) · op(B[i])` (row-major, i < batch) for every thread to take in
 * turn, one block of `rows` rows of C at a time (`gemmBlocks`): raw addresses of A, B and C,
 * the distance in floats between batch entries of A and of B (0 broadcasts the first), and the
 * leading dimensions of A and B. C is dense, `[batch, M, N]`.
 */
export const GEMM_JOB = {
  transA: "n",
  transB: "n",
  M: "n",
  N: "n",
  K: "n",
  rows: "n",
  batch: "n",
  a: "a",
  aStride: "n",
  lda: "n",
  b: "a",
  bStride: "n",
  ldb: "n",
  c: "a",
} as const;
export type GemmJob = JobOf<typeof GEMM_JOB>;

/**
 * Rows of C per block for a matMul of M rows: about an eighth of M (so that up to eight threads
 * share even a small matMul), a multiple of 64, from 64 to 512 (a block's call then packs B once
 * per 64-512 rows, which costs a few percent against one call for the whole product). A function
 * of M alone: the blocks decide the last bits of the result, never the thread count.
 */
export function gemmRows(M: number): number {
  return Math.min(512, Math.max(64, Math.ceil(M / 8 / 64) * 64));
}

/** The number of blocks of a job. */
export function gemmParts(job: GemmJob): number {
  return job.batch * Math.ceil(job.M / job.rows);
}

/** Takes blocks of `job` from `counter` until none is left, each one `gemm` call. */
export function gemmBlocks(job: GemmJob, counter: Int32Array, gemm: Sgemm): void {
  const { M, N, K, rows } = job, transA = job.transA !== 0, transB = job.transB !== 0;
  const perEntry = Math.ceil(M / rows), parts = gemmParts(job);
  for (let p = Atomics.add(counter, 0, 1); p < parts; p = Atomics.add(counter, 0, 1)) {
    const i = Math.floor(p / perEntry), m0 = (p % perEntry) * rows;
    const n = Math.min(rows, M - m0);
    // Row m0 of op(A): a row of A, or a column of A when transposed.
    const aAt = job.a + BigInt(i * job.aStride + (transA ? m0 : m0 * job.lda)) * 4n;
    const bAt = job.b + BigInt(i * job.bStride) * 4n;
    const cAt = job.c + BigInt(i * M * N + m0 * N) * 4n;
    gemm(transA, transB, n, N, K, 1, aAt, job.lda, bAt, job.ldb, cAt, N);
  }
}
