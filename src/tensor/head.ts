/**
 * The LM head's log-probabilities without its logits in memory: `log softmax(W x_p)[t]` for
 * (position p, token t) pairs, with W the `[V, E]` (tied) embedding and x_p the final features.
 *
 * The vocabulary is cut into blocks of `blockRows(P)` rows. Every thread (src/cores) takes the
 * next block in turn: OpenBLAS writes its logits `[rows, P]` (up to 2 MiB) into the thread's lane
 * (src/tensor/lane.ts), the thread reduces them to column maxima and sums of exp while they are in
 * cache and writes those to arrays all threads reach; no thread waits for another until the last
 * block, so a core slowed by a noisy neighbour takes fewer. The main thread then folds the blocks
 * in vocabulary order: `M = max_b m_b`, `S = sum_b s_b exp(m_b - M)`, `lse = M + log S`. A block
 * is computed the same way on any thread (OpenBLAS does not split the sum over E between its
 * threads), and the blocks and the fold order do not depend on the thread count, so neither do
 * the bits. No `[V, P]` tensor is made (OPT's vocabulary at 1024 positions would be 206 MB).
 *
 * Needs the native matMul (src/tensor/blas.ts); `headLogProbs` returns null without it and the
 * model uses the tfjs matMul and `columnLogSumExp` instead.
 */
import * as tf from "@tensorflow/tfjs-core";
import { heapAddress, nativeMatMul, shareBlasWork } from "./blas.ts";
import { addressOf, Command } from "../cores/mod.ts";
import { blockRows, HEAD_JOB, HEAD_WIDTH, type HeadJob, ownLane } from "./lane.ts";

export { HEAD_WIDTH } from "./lane.ts";

/**
 * log softmax(weight · features[:, col[i]])[token[i]] for each pair i, with weight `[V, E]`
 * float32 values (row-major, anywhere in memory: a weight store, src/model/weights.ts) and
 * features `[E, P]` (P <= HEAD_WIDTH) a float32 tensor on the WASM backend; null when the
 * native matMul is off. NaN for a column whose logits hold a NaN.
 */
export function headLogProbs(
  weight: Float32Array,
  features: tf.Tensor2D,
  col: Int32Array,
  token: Int32Array,
): Float32Array | null {
  if (!nativeMatMul()?.enabled) return null;
  const [E, P] = features.shape, V = E > 0 ? weight.length / E : 0;
  if (!Number.isInteger(V) || P > HEAD_WIDTH || col.length !== token.length) {
    throw new Error(
      `headLogProbs: weight of ${weight.length} values, features [${features.shape}]`,
    );
  }
  for (let i = 0; i < col.length; i++) {
    if (!(col[i] >= 0 && col[i] < P)) throw new RangeError(`column ${col[i]} not in [0, ${P})`);
    if (!(token[i] >= 0 && token[i] < V)) {
      throw new RangeError(`token ${token[i]} not in [0, ${V})`);
    }
  }
  if (P === 0) return new Float32Array(col.length);
  const rows = blockRows(P);
  const blocks = Math.ceil(V / rows);
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
    weight: addressOf(weight),
    features: heapAddress(features),
    maxes: addressOf(maxes),
    sums: addressOf(sums),
    nan: addressOf(nanAt),
    pairs: col.length,
    col: addressOf(cols),
    token: addressOf(tokens),
    picked: addressOf(picked),
  };
  shareBlasWork(
    Command.HeadBlocks,
    HEAD_JOB,
    job,
    (counter, gemm) => ownLane().headBlocks(job, counter, gemm),
  );
  // The fold, in vocabulary order.
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
 * headLogProbs' arrays, which the other threads write through raw addresses: views of one
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
