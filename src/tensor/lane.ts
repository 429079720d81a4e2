/**
 * One thread's lane: the fused kernels (./wasm/fused_kernel.ts) on a WASM memory of their own,
 * LANE_BYTES long and never grown, so that its address is stable and OpenBLAS, called by the
 * thread that owns it, can write into it. Each helper thread of src/cores has one, and so does
 * the main thread (`ownLane`). Kept free of TensorFlow.js, so that helper threads load little;
 * pages a lane never touches cost no memory.
 *
 * Head (`headBlocks`, src/tensor/head.ts): a block of logits `[rows, P]` (row-major, rows * P <=
 * BLOCK_FLOATS) at LOGITS; its column maxima m (P float32) at MAXES and its sums of
 * exp(logit - m) (P float64) at SUMS, then copied to the job's arrays.
 *
 * Attention with OpenBLAS (`attendHeads`): one (row, head)'s scores `[S, S]` at LOGITS, its key
 * mask and the exp constants after them. Without OpenBLAS (`attendRows`): a helper's share of
 * the WASM attention kernel's rows, copied into the lane from LOGITS on.
 */
import { instantiateFusedKernels } from "./wasm/fused_kernels.ts";
import { addressOf, bufferAt, floatsAt } from "../cores/mod.ts";
import type { Sgemm } from "./sgemm.ts";

/** Positions per block at most (the head's width). */
export const HEAD_WIDTH = 1024;
/**
 * Floats of a block of logits at most (2 MiB: in the L2/L3 cache while it is reduced). Larger
 * blocks mean fewer, larger OpenBLAS calls (each packs the head's input anew) and fewer folds:
 * the LM head of small-opt at 1008 positions took 167 ms with 4 MiB blocks, 184-204 with 1 MiB,
 * in rounds (src/tensor/head.ts). Since the threads take blocks in turn, 2 MiB are as fast as 4
 * and keep each thread's lane 2 MiB smaller.
 */
export const BLOCK_FLOATS = 1 << 19;

const LOGITS = 1 << 16; // the kernels keep nothing in memory; the first page stays unused
const MAXES = LOGITS + BLOCK_FLOATS * 4;
const CONSTANTS = MAXES + HEAD_WIDTH * 4; // 208 bytes for colSumExp's exp constants
const SUMS = CONSTANTS + 256;
const PAGES = 128; // 8 MiB, of which the head uses 2.1 MiB

/** Bytes of a lane. */
export const LANE_BYTES = PAGES * 65536;
if (SUMS + HEAD_WIDTH * 8 > LANE_BYTES) throw new Error("lane: head layout does not fit");

/**
 * Vocabulary rows per block for P positions: as many as fit BLOCK_FLOATS, a multiple of 16,
 * at most 16384. A function of P alone: the blocks decide the last bits of the result.
 */
export function blockRows(P: number): number {
  if (!Number.isInteger(P) || P < 1 || P > HEAD_WIDTH) {
    throw new RangeError(`head: positions per block must be in [1, ${HEAD_WIDTH}], got ${P}`);
  }
  return Math.min(16384, Math.floor(BLOCK_FLOATS / P / 16) * 16);
}

/** The head's views of a lane memory: the block of logits and the block's results. */
function laneViews(buffer: ArrayBufferLike) {
  return {
    logits: new Float32Array(buffer, LOGITS, BLOCK_FLOATS),
    maxes: new Float32Array(buffer, MAXES, HEAD_WIDTH),
    sums: new Float64Array(buffer, SUMS, HEAD_WIDTH),
  };
}

/** Addresses of fusedAttention's operands, in memory another thread owns. */
export interface AttentionOperands {
  q: bigint;
  k: bigint;
  v: bigint;
  keyMask: bigint;
  out: bigint;
}

/** How a job's fields travel in a helper's arguments: "n" a number, "a" a raw address. */
export type Layout = Record<string, "n" | "a">;
export type JobOf<L extends Layout> = { [K in keyof L]: L[K] extends "a" ? bigint : number };

/**
 * The LM head's blocks for every thread to take in turn (src/tensor/head.ts): the weight
 * `[V, E]` and features `[E, P]` (raw addresses), `blocks` blocks of `rows` vocabulary rows, and
 * where each block's results go: its column maxima (float32) and sums (float64) at
 * `[block * P + p]`, a 1 where a column's maximum is -Infinity but the block holds a NaN, and
 * the logit of each of the `pairs` (column, token) pairs whose token is in the block.
 */
export const HEAD_JOB = {
  V: "n",
  E: "n",
  P: "n",
  rows: "n",
  blocks: "n",
  weight: "a",
  features: "a",
  maxes: "a",
  sums: "a",
  nan: "a",
  pairs: "n",
  col: "a",
  token: "a",
  picked: "a",
} as const;
export type HeadJob = JobOf<typeof HEAD_JOB>;

/**
 * fusedAttention's (row, head) pairs for every thread to take in turn (src/tensor/fused.ts):
 * q, k, v, out `[H * hd, B * S]` float32 and the key mask `[B * S]` int32 (raw addresses), and
 * the scale of q · k.
 */
export const ATTENTION_JOB = {
  q: "a",
  k: "a",
  v: "a",
  keyMask: "a",
  out: "a",
  B: "n",
  S: "n",
  H: "n",
  hd: "n",
  scale: "n",
} as const;
export type AttentionJob = JobOf<typeof ATTENTION_JOB>;

/**
 * Writes a job into a helper's arguments, field by field in `layout`'s order, then the name of
 * the BLAS library the helper opens for it (its length, then its UTF-16 code units).
 */
export function encodeJob<L extends Layout>(
  layout: L,
  job: JobOf<L>,
  library: string,
  args: Float64Array,
): void {
  const fields = Object.keys(layout);
  fields.forEach((f, i) => (args[i] = Number(job[f])));
  args[fields.length] = library.length;
  for (let i = 0; i < library.length; i++) args[fields.length + 1 + i] = library.charCodeAt(i);
}

/** The job and library name `encodeJob` wrote. */
export function decodeJob<L extends Layout>(
  layout: L,
  args: Float64Array,
): { job: JobOf<L>; library: string } {
  const fields = Object.keys(layout);
  const job = Object.fromEntries(
    fields.map((f, i) => [f, layout[f] === "a" ? BigInt(args[i]) : args[i]]),
  ) as JobOf<L>;
  const at = fields.length;
  return { job, library: String.fromCharCode(...args.subarray(at + 1, at + 1 + args[at])) };
}

/** Whether `attendHeads` fits a (row, head) of S tokens in a lane. */
export function laneFitsHeads(S: number): boolean {
  return LOGITS + (S * S + S + 64) * 4 <= LANE_BYTES;
}

/** A lane owned by this thread: the LM head's blocks and attention's work on it. */
export interface Lane {
  /**
   * Takes (row, head) pairs of `job` from `counter` until none is left: for each, OpenBLAS
   * (`gemm`) writes scale · q^T k into this lane, the `attentionProbs` kernel turns it into
   * probabilities there, and OpenBLAS writes v p^T into `out`.
   */
  attendHeads(job: AttentionJob, counter: Int32Array, gemm: Sgemm): void;
  /**
   * Takes blocks of `job` from `counter` until none is left: for each, OpenBLAS (`gemm`) writes
   * its logits into this lane, the kernels make their column maxima and sums of exp there, and
   * they go to the job's arrays with the block's picked logits.
   */
  headBlocks(job: HeadJob, counter: Int32Array, gemm: Sgemm): void;
  /**
   * fusedAttention's work for rows [bFrom, bTo) of the batch (q, k, v, out `[H * hd, B * S]`
   * float32, the key mask B * S int32).
   */
  attendRows(
    at: AttentionOperands,
    shape: { B: number; S: number; H: number; hd: number },
    bFrom: number,
    bTo: number,
  ): void;
}

/** Bytes a lane needs to attend one (row, head) of S tokens and head size hd. */
export function attentionBytes(S: number, hd: number): number {
  return (4 * hd * S + S + S * S + 3 * hd * S) * 4;
}

/** Whether `attendRows` fits in a lane for these sizes. */
export function laneFitsAttention(S: number, hd: number): boolean {
  return LOGITS + attentionBytes(S, hd) <= LANE_BYTES;
}

/** A new lane on a memory of its own (each thread makes one). */
export function createLane(): Lane {
  const memory = new WebAssembly.Memory({ initial: PAGES, maximum: PAGES });
  const ex = instantiateFusedKernels(memory);
  const floats = new Float32Array(memory.buffer);
  const address = addressOf(floats);
  const views = laneViews(memory.buffer);
  const logitsAt = address + BigInt(LOGITS);
  const reduce = (rows: number, P: number) => {
    if (rows * P > BLOCK_FLOATS || P > HEAD_WIDTH) {
      throw new RangeError(`lane: block [${rows}, ${P}] does not fit`);
    }
    ex.colMax(LOGITS, rows, P, MAXES);
    ex.colSumExp(LOGITS, rows, P, MAXES, CONSTANTS, SUMS);
  };
  return {
    attendHeads(job, counter, gemm) {
      const { B, S, H, hd, scale } = job, N = B * S;
      if (!laneFitsHeads(S)) throw new RangeError(`lane: attention S=${S} does not fit`);
      const scores = LOGITS, maskAt = scores + S * S * 4, constants = maskAt + S * 4;
      const scoresAt = address + BigInt(scores);
      const mask = new Int32Array(bufferAt(job.keyMask, N * 4));
      const laneInts = new Int32Array(memory.buffer);
      for (let i = Atomics.add(counter, 0, 1); i < B * H; i = Atomics.add(counter, 0, 1)) {
        const b = Math.floor(i / H), h = i % H;
        const first = BigInt((h * hd * N + b * S) * 4); // element (h * hd, b * S)
        gemm(true, false, S, S, hd, scale, job.q + first, N, job.k + first, N, scoresAt, S);
        laneInts.set(mask.subarray(b * S, b * S + S), maskAt / 4);
        ex.attentionProbs(scores, S, maskAt, constants);
        gemm(false, true, hd, S, S, 1, job.v + first, N, scoresAt, S, job.out + first, N);
      }
    },
    headBlocks(job, counter, gemm) {
      const { V, E, P, rows, blocks } = job;
      const maxes = new Float32Array(bufferAt(job.maxes, blocks * P * 4));
      const sums = new Float64Array(bufferAt(job.sums, blocks * P * 8));
      const nan = new Uint8Array(bufferAt(job.nan, blocks * P));
      const col = new Int32Array(bufferAt(job.col, job.pairs * 4));
      const token = new Int32Array(bufferAt(job.token, job.pairs * 4));
      const picked = new Float32Array(bufferAt(job.picked, job.pairs * 4));
      for (let b = Atomics.add(counter, 0, 1); b < blocks; b = Atomics.add(counter, 0, 1)) {
        const v0 = b * rows, n = Math.min(rows, V - v0);
        gemm(
          false,
          false,
          n,
          P,
          E,
          1,
          job.weight + BigInt(v0 * E * 4),
          E,
          job.features,
          P,
          logitsAt,
          P,
        );
        reduce(n, P);
        maxes.set(views.maxes.subarray(0, P), b * P);
        sums.set(views.sums.subarray(0, P), b * P);
        for (let p = 0; p < P; p++) {
          // Every logit of the column is -Infinity, or a NaN hid behind the kernel's pmax.
          if (views.maxes[p] === -Infinity) nan[b * P + p] = columnHasNaN(views.logits, n, P, p);
        }
        for (let i = 0; i < job.pairs; i++) {
          const t = token[i] - v0;
          if (t >= 0 && t < n) picked[i] = views.logits[t * P + col[i]];
        }
      }
    },
    attendRows(at, { B, S, H, hd }, bFrom, bTo) {
      if (!laneFitsAttention(S, hd)) throw new RangeError(`lane: attention S=${S} does not fit`);
      const N = B * S, D = H * hd;
      const q = floatsAt(at.q, D * N), k = floatsAt(at.k, D * N), v = floatsAt(at.v, D * N);
      const out = floatsAt(at.out, D * N), mask = floatsAt(at.keyMask, N);
      // The kernel packs each (row, head) before it computes it, so any sub-batch copied here
      // gets the same arithmetic as the whole batch. As many rows as fit go at once: one copy
      // per hidden row and tensor; else one (row, head) at a time.
      const scratchFloats = S * S + 3 * hd * S;
      const rowsAtOnce = Math.floor(
        (LANE_BYTES - LOGITS - scratchFloats * 4) / ((4 * D * S + S) * 4),
      );
      const [rows, heads] = rowsAtOnce >= 1 ? [rowsAtOnce, H] : [1, 1];
      const width = heads * hd;
      for (let b0 = bFrom; b0 < bTo; b0 += rows) {
        const nb = Math.min(rows, bTo - b0), n = nb * S; // columns of this sub-batch
        const fq = LOGITS / 4, fk = fq + width * n, fv = fk + width * n, fo = fv + width * n;
        const fm = fo + width * n, scratch = (fm + n) * 4;
        floats.set(mask.subarray(b0 * S, b0 * S + n), fm); // int32 bits, copied as they are
        for (let h0 = 0; h0 < H; h0 += heads) {
          for (let d = 0; d < width; d++) {
            const src = (h0 * hd + d) * N + b0 * S;
            floats.set(q.subarray(src, src + n), fq + d * n);
            floats.set(k.subarray(src, src + n), fk + d * n);
            floats.set(v.subarray(src, src + n), fv + d * n);
          }
          ex.attention(fq * 4, fk * 4, fv * 4, fm * 4, fo * 4, nb, S, heads, hd, scratch, 0, nb);
          for (let d = 0; d < width; d++) {
            out.set(floats.subarray(fo + d * n, fo + (d + 1) * n), (h0 * hd + d) * N + b0 * S);
          }
        }
      }
    },
  };
}

/** 1 when column p of a `[rows, P]` block holds a NaN. */
function columnHasNaN(block: Float32Array, rows: number, P: number, p: number): number {
  for (let v = 0; v < rows; v++) if (Number.isNaN(block[v * P + p])) return 1;
  return 0;
}

let own: Lane | undefined;

/** The main thread's lane (made on first use); a helper makes its own with `createLane`. */
export function ownLane(): Lane {
  own ??= createLane();
  return own;
}
