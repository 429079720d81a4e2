/**
 * The LM head's log-probabilities without its logits in memory: `log softmax(W x_p)[t]` for
 * (position p, token t) pairs, with W the `[V, E]` (tied) embedding and x_p the final features.
 *
 * The vocabulary is cut into blocks of `blockRows(P)` rows. OpenBLAS writes each block of logits
 * `[rows, P]` (up to 4 MiB) straight into a thread's lane (src/tensor/lane.ts); that thread
 * reduces it to column maxima and sums of exp while it is still in cache, and the main thread
 * folds the blocks in vocabulary order: `M = max_b m_b`, `S = sum_b s_b exp(m_b - M)`,
 * `lse = M + log S`. With T threads, T blocks are in flight per round (src/cores): the blocks
 * and the fold order do not depend on T, so neither do the bits. No `[V, P]` tensor is made
 * (OPT's vocabulary at 1024 positions would be 206 MB).
 *
 * Needs the native matMul (src/tensor/blas.ts); `headLogProbs` returns null without it and the
 * model uses the tfjs matMul and `columnLogSumExp` instead.
 */
import * as tf from "@tensorflow/tfjs-core";
import { heapAddress, nativeMatMul, sgemmAt } from "./blas.ts";
import { Command, floatsAt, type Helper, helpers, waitAll } from "../cores/mod.ts";
import {
  blockRows,
  createLane,
  HEAD_WIDTH,
  type Lane,
  LANE_BYTES,
  LANE_LOGITS,
  type LaneViews,
  laneViews,
} from "./lane.ts";

export { HEAD_WIDTH } from "./lane.ts";

let own: Lane | undefined;
let helperLanes: LaneViews[] | undefined;

/** The main thread's lane and views of every helper's lane, in thread order. */
function lanes(): { main: Lane; others: LaneViews[] } {
  own ??= createLane();
  helperLanes ??= helpers().map((h) => laneViews(floatsAt(h.lane, LANE_BYTES / 4).buffer, h.lane));
  return { main: own, others: helperLanes };
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

function columnHasNaN(block: Float32Array, rows: number, P: number, p: number): boolean {
  for (let v = 0; v < rows; v++) if (Number.isNaN(block[v * P + p])) return true;
  return false;
}
