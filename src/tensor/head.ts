/**
 * The LM head's log-probabilities without its logits in memory: `log softmax(W x_p)[t]` for
 * (position p, token t) pairs, with W the `[V, E]` (tied) embedding and x_p the final features.
 *
 * The vocabulary is cut into blocks of `blockRows(P)` rows. OpenBLAS writes each block of logits
 * `[rows, P]` (up to 2 MiB) straight into a thread's lane (src/tensor/lane.ts); that thread
 * reduces it to column maxima and sums of exp while it is still in cache, and the main thread
 * folds the blocks in vocabulary order: `M = max_b m_b`, `S = sum_b s_b exp(m_b - M)`,
 * `lse = M + log S`. With helper threads (src/cores) and OpenBLAS, every thread takes the next
 * block in turn and makes its own OpenBLAS call (`stolenBlocks`): no thread waits for another
 * until the last block. Otherwise the main thread has OpenBLAS (on all its threads) write T
 * blocks per round, one per lane. Either way the blocks and the fold order do not depend on T,
 * so neither do the bits. No `[V, P]` tensor is made (OPT's vocabulary at 1024 positions would
 * be 206 MB).
 *
 * Needs the native matMul (src/tensor/blas.ts); `headLogProbs` returns null without it and the
 * model uses the tfjs matMul and `columnLogSumExp` instead.
 */
import * as tf from "@tensorflow/tfjs-core";
import {
  heapAddress,
  nativeMatMul,
  sgemmAt,
  threadableLibrary,
  withOneBlasThread,
} from "./blas.ts";
import { openSgemm, writeLibraryName } from "./sgemm.ts";
import {
  addressOf,
  Command,
  floatsAt,
  type Helper,
  helpers,
  waitAll,
  workCounter,
} from "../cores/mod.ts";
import {
  blockRows,
  columnHasNaN,
  encodeHeadJob,
  HEAD_JOB_FIELDS,
  HEAD_WIDTH,
  type HeadJob,
  type Lane,
  LANE_BYTES,
  LANE_LOGITS,
  type LaneViews,
  laneViews,
  ownLane,
} from "./lane.ts";

export { HEAD_WIDTH } from "./lane.ts";

let helperLanes: LaneViews[] | undefined;

/** The main thread's lane and views of every helper's lane, in thread order. */
function lanes(): { main: Lane; others: LaneViews[] } {
  helperLanes ??= helpers().map((h) => laneViews(floatsAt(h.lane, LANE_BYTES / 4).buffer, h.lane));
  return { main: ownLane(), others: helperLanes };
}

/**
 * log softmax(weight · features[:, col[i]])[token[i]] for each pair i, with weight `[V, E]` and
 * features `[E, P]` (P <= HEAD_WIDTH) float32 tensors on the WASM backend; null when the native
 * matMul is off. NaN for a column whose logits hold a NaN.
 */
export function headLogProbs(
  weight: tf.Tensor2D,
  features: tf.Tensor2D,
  col: Int32Array,
  token: Int32Array,
): Float32Array | null {
  if (!nativeMatMul()?.enabled) return null;
  const [V, E] = weight.shape, [E2, P] = features.shape;
  if (E !== E2 || P > HEAD_WIDTH || col.length !== token.length) {
    throw new Error(`headLogProbs: weight [${weight.shape}], features [${features.shape}]`);
  }
  for (let i = 0; i < col.length; i++) {
    if (!(col[i] >= 0 && col[i] < P)) throw new RangeError(`column ${col[i]} not in [0, ${P})`);
    if (!(token[i] >= 0 && token[i] < V)) {
      throw new RangeError(`token ${token[i]} not in [0, ${V})`);
    }
  }
  const picked = new Float32Array(col.length);
  const maxes = new Float64Array(P).fill(-Infinity);
  const sums = new Float64Array(P);
  const nan = new Uint8Array(P);
  if (P === 0) return picked;
  const rows = blockRows(P);
  const blocks = Math.ceil(V / rows);
  // Pairs by the block that holds their token.
  const byBlock: number[][] = Array.from({ length: blocks }, () => []);
  for (let i = 0; i < token.length; i++) byBlock[Math.floor(token[i] / rows)].push(i);

  const library = threadableLibrary();
  if (library !== undefined && helpers().length > 0) {
    return stolenBlocks(library, weight, features, col, token, { V, E, P, rows, blocks });
  }
  const { main, others } = lanes();
  const pool = helpers();
  const all: LaneViews[] = [main, ...others];
  const w = heapAddress(weight), x = heapAddress(features);
  for (let first = 0; first < blocks; first += all.length) {
    const round = all.slice(0, Math.min(all.length, blocks - first));
    round.forEach((lane, t) => {
      const v0 = (first + t) * rows;
      const n = Math.min(rows, V - v0);
      sgemmAt(n, P, E, w + BigInt(v0 * E * 4), x, lane.address + BigInt(LANE_LOGITS));
    });
    const posted: Helper[] = [];
    try {
      for (let t = 1; t < round.length; t++) {
        const helper = pool[t - 1];
        helper.args[0] = Math.min(rows, V - (first + t) * rows);
        helper.args[1] = P;
        helper.post(Command.HeadBlock);
        posted.push(helper);
      }
      main.reduce(Math.min(rows, V - first * rows), P);
    } finally {
      waitAll(posted);
    }
    round.forEach((lane, t) => {
      const b = first + t, v0 = b * rows;
      const laneMaxes = lane.maxes, laneSums = lane.sums;
      for (let p = 0; p < P; p++) {
        const m = laneMaxes[p], s = laneSums[p];
        if (m === -Infinity) {
          // Every logit of the block's column is -Infinity (exp: 0), unless a NaN hid behind
          // the kernel's pmax; the kernel's sum is NaN either way (-inf - -inf), so look.
          if (columnHasNaN(lane.logits, Math.min(rows, V - v0), P, p)) nan[p] = 1;
        } else if (m !== m || s !== s) nan[p] = 1;
        else if (m <= maxes[p]) sums[p] += s * Math.exp(m - maxes[p]);
        else {
          sums[p] = sums[p] * Math.exp(maxes[p] - m) + s;
          maxes[p] = m;
        }
      }
      for (const i of byBlock[b]) picked[i] = lane.logits[(token[i] - v0) * P + col[i]];
    });
  }
  for (let i = 0; i < col.length; i++) {
    const p = col[i];
    picked[i] = nan[p] ? NaN : picked[i] - (maxes[p] + Math.log(sums[p]));
  }
  return picked;
}

/**
 * headLogProbs on every thread without rounds: each thread takes the next block of the
 * vocabulary from the shared counter, has OpenBLAS (one thread per call) write its logits into
 * its own lane, reduces them there and writes the block's maxima, sums and picked logits to
 * arrays all threads can reach; the main thread then folds the blocks in vocabulary order. No
 * thread waits for another until the last block, so a core that runs slower (a noisy
 * neighbour) takes fewer blocks. Each block is computed the same way on any thread (OpenBLAS'
 * result does not depend on its thread count: it does not split the sum over E), so the bits
 * do not depend on the thread count.
 */
function stolenBlocks(
  library: string,
  weight: tf.Tensor2D,
  features: tf.Tensor2D,
  col: Int32Array,
  token: Int32Array,
  { V, E, P, rows, blocks }: { V: number; E: number; P: number; rows: number; blocks: number },
): Float32Array {
  const { maxes, sums, nanAt, picked, cols, tokens } = jobArrays(blocks * P, col.length);
  nanAt.fill(0);
  cols.set(col);
  tokens.set(token);
  const job: HeadJob = {
    V,
    E,
    P,
    rows,
    blocks,
    weight: heapAddress(weight),
    features: heapAddress(features),
    maxes: addressOf(maxes),
    sums: addressOf(sums),
    nan: addressOf(nanAt),
    pairs: col.length,
    col: addressOf(cols),
    token: addressOf(tokens),
    picked: addressOf(picked),
  };
  const counter = workCounter();
  Atomics.store(counter, 0, 0);
  const { main } = lanes();
  withOneBlasThread(() => {
    const posted: Helper[] = [];
    try {
      for (const helper of helpers()) {
        encodeHeadJob(job, helper.args);
        writeLibraryName(helper.args, HEAD_JOB_FIELDS.length, library);
        helper.post(Command.HeadBlocks);
        posted.push(helper);
      }
      main.headBlocks(job, counter, openSgemm(library));
    } finally {
      waitAll(posted);
    }
  });
  const M = new Float64Array(P).fill(-Infinity), S = new Float64Array(P);
  const nan = new Uint8Array(P);
  for (let b = 0; b < blocks; b++) {
    for (let p = 0; p < P; p++) {
      const m = maxes[b * P + p], s = sums[b * P + p];
      if (m === -Infinity) {
        if (nanAt[b * P + p]) nan[p] = 1;
      } else if (m !== m || s !== s) nan[p] = 1;
      else if (m <= M[p]) S[p] += s * Math.exp(m - M[p]);
      else {
        S[p] = S[p] * Math.exp(M[p] - m) + s;
        M[p] = m;
      }
    }
  }
  const out = new Float32Array(col.length);
  for (let i = 0; i < col.length; i++) {
    const p = col[i];
    out[i] = nan[p] ? NaN : picked[i] - (M[p] + Math.log(S[p]));
  }
  return out;
}

let arrays: { buffer: ArrayBuffer; cells: number; pairs: number } | undefined;

/**
 * stolenBlocks' arrays, which the other threads write through raw addresses: views of one
 * ArrayBuffer, whose memory V8 never moves (a small typed array made directly may live in V8's
 * heap), kept from call to call (made anew each time, they piled up as garbage: 7 MiB of RSS).
 */
function jobArrays(cells: number, pairs: number) {
  if (!arrays || arrays.cells < cells || arrays.pairs < pairs) {
    const c = Math.max(cells, arrays?.cells ?? 0), n = Math.max(pairs, arrays?.pairs ?? 0);
    arrays = { buffer: new ArrayBuffer(c * 13 + n * 12 + 16), cells: c, pairs: n };
  }
  const { buffer, cells: c, pairs: n } = arrays;
  return {
    sums: new Float64Array(buffer, 0, cells),
    maxes: new Float32Array(buffer, c * 8, cells),
    picked: new Float32Array(buffer, c * 12, pairs),
    cols: new Int32Array(buffer, c * 12 + n * 4, pairs),
    tokens: new Int32Array(buffer, c * 12 + n * 8, pairs),
    nanAt: new Uint8Array(buffer, c * 12 + n * 12, cells),
  };
}
