/**
 * Greedy generation for OPT with a key/value cache, per stage.
 *
 * `stageForwardCached` runs one stage's layers on the *new* tokens of a batch only, reading the
 * keys and values of the earlier tokens from that stage's own `StageCache` and appending the new
 * ones. A model split into stages keeps one cache per stage (each stage only ever sees its own
 * layers), so a pipeline over a transport can run it stage by stage: stage k gets the new
 * tokens' hidden states `[hidden, B * S_new]` from stage k-1, as `stageForward` does.
 *
 * The linears, LayerNorms and embeddings are opt.ts'; attention over the cache is its own, with
 * the same semantics:
 * positions from the attention-mask cumsum (pos = cumsum(mask) * mask - 1, row pos + 2, counted
 * over the cached tokens too), q scaled by head_dim^-0.5, masked scores = float32 min, softmax in
 * float32, pre-LN or post-LN layers, final LN and project_out on the head stage, LoRA adapters.
 *
 * `generateGreedy` batches prompts with left padding (as Hugging Face's `generate` does for
 * decoder-only models), prefills them in one pass, then feeds one token per row per step. A row
 * stops at a stop token (not included in its output) or after `maxNewTokens`; a finished row is
 * fed padding (mask 0) until the batch is done. With `useCache: false` every step reruns the
 * whole left-padded sequence through `stageForward`: the reference the cache is tested against.
 */
import * as tf from "@tensorflow/tfjs-core";
import {
  embedTokens,
  layerNorm,
  linear,
  logitsAt,
  padBatch,
  type Stage,
  stageForward,
  type TokenBatch,
} from "./opt.ts";

const F32_MIN = -3.4028234663852886e38;

/** One stage's cache: keys (transposed) and values of its layers for every token fed so far. */
export interface StageCache {
  batchSize: number;
  /** Tokens cached per row (the same for every row: padding is cached too). */
  length: number;
  /** Per layer of the stage: Kᵀ [B*H, hd, T] and V [B*H, T, hd]. */
  layers: { kt: tf.Tensor3D; v: tf.Tensor3D }[];
  /** Attention mask of the cached tokens, row b at [b * length, (b + 1) * length). */
  mask: Int32Array;
  /** Real tokens seen so far per row (the running mask cumsum, for positions). */
  count: Int32Array;
}

export function createStageCache(batchSize: number): StageCache {
  return {
    batchSize,
    length: 0,
    layers: [],
    mask: new Int32Array(0),
    count: new Int32Array(batchSize),
  };
}

export function disposeStageCache(cache: StageCache): void {
  for (const l of cache.layers) {
    l.kt.dispose();
    l.v.dispose();
  }
  cache.layers = [];
}

/** Attention of S new queries over the T cached + S new keys; returns the new K/V caches. */
function cachedAttention(
  stage: Stage,
  prefix: string,
  x: tf.Tensor2D,
  mask: tf.Tensor4D,
  past: { kt: tf.Tensor3D; v: tf.Tensor3D } | undefined,
  B: number,
  S: number,
): { out: tf.Tensor2D; kt: tf.Tensor3D; v: tf.Tensor3D } {
  const { hiddenSize: D, numHeads: H, headDim: hd } = stage.config;
  const q = tf.mul(linear(stage, `${prefix}.q_proj`, x), hd ** -0.5);
  const k = linear(stage, `${prefix}.k_proj`, x);
  const v = linear(stage, `${prefix}.v_proj`, x);
  const Q = tf.reshape(tf.transpose(tf.reshape(q, [H, hd, B, S]), [2, 0, 3, 1]), [B * H, S, hd]);
  let Kt = tf.reshape(tf.transpose(tf.reshape(k, [H, hd, B, S]), [2, 0, 1, 3]), [B * H, hd, S]);
  let V = tf.reshape(tf.transpose(tf.reshape(v, [H, hd, B, S]), [2, 0, 3, 1]), [B * H, S, hd]);
  if (past) {
    Kt = tf.concat([past.kt, Kt], 2);
    V = tf.concat([past.v, V], 1);
  }
  const T = Kt.shape[2] as number;
  const scores = tf.reshape(tf.matMul(Q, Kt), [B, H, S, T]);
  const masked = tf.maximum(tf.add(scores, mask), F32_MIN);
  const probs = tf.reshape(tf.softmax(masked), [B * H, S, T]);
  const ctx = tf.reshape(tf.matMul(probs, V), [B, H, S, hd]);
  const ctxT = tf.reshape(tf.transpose(ctx, [1, 3, 0, 2]), [D, B * S]) as tf.Tensor2D;
  return {
    out: linear(stage, `${prefix}.out_proj`, ctxT),
    kt: Kt as tf.Tensor3D,
    v: V as tf.Tensor3D,
  };
}

/**
 * Runs one stage on the new tokens `batch` (B rows of S new tokens; ids and mask of the new
 * tokens only) with its cache, and appends them to the cache. The first stage reads the ids;
 * later stages read the previous stage's output for the new tokens, `input` [hidden, B * S].
 * Returns what `stageForward` would return for those tokens: hidden states, or on the head
 * stage the LM-head features `[embedDim, B * S]`.
 */
export function stageForwardCached(
  stage: Stage,
  cache: StageCache,
  batch: TokenBatch,
  input?: tf.Tensor2D,
): tf.Tensor2D {
  const { batchSize: B, seqLen: S } = batch;
  if (B !== cache.batchSize) {
    throw new Error(`stageForwardCached: batch of ${B} rows, cache of ${cache.batchSize}`);
  }
  const P = cache.length, T = P + S;
  // Full mask and positions of the new tokens (cumsum over cached + new tokens).
  const full = new Int32Array(B * T);
  const rows = new Int32Array(B * S);
  const count = Int32Array.from(cache.count);
  for (let b = 0; b < B; b++) {
    full.set(cache.mask.subarray(b * P, (b + 1) * P), b * T);
    for (let s = 0; s < S; s++) {
      const m = batch.mask[b * S + s];
      full[b * T + P + s] = m;
      count[b] += m;
      rows[b * S + s] = count[b] * m - 1 + 2;
    }
  }
  const add = new Float32Array(B * S * T);
  for (let b = 0; b < B; b++) {
    for (let i = 0; i < S; i++) {
      for (let j = 0; j < T; j++) {
        const visible = j <= P + i && full[b * T + j] === 1;
        add[(b * S + i) * T + j] = visible ? 0 : F32_MIN;
      }
    }
  }
  const result = tf.tidy(() => {
    let h: tf.Tensor2D;
    if (stage.range.embeddings) h = embedTokens(stage, batch.ids, rows);
    else if (input) h = input;
    else throw new Error("stageForwardCached: a stage without embeddings needs hidden states");
    const mask = tf.tensor4d(add, [B, 1, S, T]);
    const kts: tf.Tensor3D[] = [], vs: tf.Tensor3D[] = [];
    const { firstLayer, endLayer } = stage.range;
    for (let l = firstLayer; l < endLayer; l++) {
      const p = `layers.${l}`;
      const past = cache.layers[l - firstLayer];
      const mlp = (x: tf.Tensor2D) =>
        linear(stage, `${p}.fc2`, tf.relu(linear(stage, `${p}.fc1`, x)) as tf.Tensor2D);
      if (stage.config.preLayerNorm) {
        const a = cachedAttention(
          stage,
          `${p}.self_attn`,
          layerNorm(stage, `${p}.self_attn_layer_norm`, h),
          mask,
          past,
          B,
          S,
        );
        h = tf.add(h, a.out);
        h = tf.add(h, mlp(layerNorm(stage, `${p}.final_layer_norm`, h)));
        kts.push(a.kt);
        vs.push(a.v);
      } else {
        const a = cachedAttention(stage, `${p}.self_attn`, h, mask, past, B, S);
        h = layerNorm(stage, `${p}.self_attn_layer_norm`, tf.add(h, a.out));
        h = layerNorm(stage, `${p}.final_layer_norm`, tf.add(h, mlp(h)));
        kts.push(a.kt);
        vs.push(a.v);
      }
    }
    if (stage.range.head) {
      if (stage.config.hasFinalLayerNorm) h = layerNorm(stage, "final_layer_norm", h);
      if (stage.config.hasProjections) h = linear(stage, "project_out", h, false);
    }
    return { h, kts, vs };
  });
  disposeStageCache(cache);
  cache.layers = result.kts.map((kt, i) => ({ kt, v: result.vs[i] }));
  cache.mask = full;
  cache.count = count;
  cache.length = T;
  return result.h;
}

export interface GenerateOptions {
  /** At most this many new tokens per prompt. */
  maxNewTokens: number;
  /** A row stops when it generates a token for which this is true (the token is dropped). */
  isStop: (token: number) => boolean;
  /** Use the KV cache (default true); false reruns the whole sequence every step. */
  useCache?: boolean;
}

/** Keeps at most `max` tokens of a prompt, dropping from the left but keeping BOS. */
function fitPrompt(ids: number[], max: number): number[] {
  if (ids.length <= max) return ids;
  return [ids[0], ...ids.slice(ids.length - max + 1)];
}

/**
 * Greedy decoding of a batch of prompts through a pipeline of stages (one stage holding the
 * whole model, or several in order). Prompts longer than `maxPositions - maxNewTokens` are
 * truncated from the left with BOS kept. Returns each row's new tokens.
 */
export function generateGreedy(
  pipeline: Stage | Stage[],
  prompts: number[][],
  opts: GenerateOptions,
): number[][] {
  const stages = Array.isArray(pipeline) ? pipeline : [pipeline];
  const first = stages[0], last = stages[stages.length - 1];
  if (!first.range.embeddings || !last.range.head) {
    throw new Error(
      "generateGreedy: the pipeline must start with embeddings and end with the head",
    );
  }
  const cfg = first.config;
  const B = prompts.length;
  if (B === 0) return [];
  const limit = cfg.maxPositions - opts.maxNewTokens;
  if (limit < 1) throw new Error(`maxNewTokens ${opts.maxNewTokens} leaves no room for a prompt`);
  const fitted = prompts.map((p) => {
    if (p.length === 0) throw new Error("generateGreedy: empty prompt");
    return fitPrompt(p, limit);
  });
  const out: number[][] = fitted.map(() => []);
  const done = new Array<boolean>(B).fill(false);
  const pick = (features: tf.Tensor2D, positions: Int32Array): Int32Array => {
    const next = tf.tidy(() =>
      tf.argMax(logitsAt(last, features, positions), 1).dataSync() as Int32Array
    );
    return Int32Array.from(next);
  };
  const runPipeline = (
    batch: TokenBatch,
    step: (s: Stage, k: number, b: TokenBatch, h?: tf.Tensor2D) => tf.Tensor2D,
  ) => {
    let h: tf.Tensor2D | undefined;
    stages.forEach((s, k) => {
      const next = step(s, k, batch, h);
      h?.dispose();
      h = next;
    });
    return h!;
  };
  const accept = (next: Int32Array): boolean => {
    let active = false;
    for (let b = 0; b < B; b++) {
      if (done[b]) continue;
      if (opts.isStop(next[b])) done[b] = true;
      else {
        out[b].push(next[b]);
        if (out[b].length >= opts.maxNewTokens) done[b] = true;
      }
      active ||= !done[b];
    }
    return active;
  };

  if (opts.useCache === false) {
    while (true) {
      const seqs = fitted.map((p, b) => [...p, ...out[b]]);
      const batch = padBatch(seqs, cfg.padTokenId, true);
      const features = runPipeline(batch, (s, _k, b, h) => stageForward(s, b, h));
      const S = batch.seqLen;
      const next = pick(features, Int32Array.from({ length: B }, (_, b) => b * S + S - 1));
      features.dispose();
      if (!accept(next)) break;
    }
    return out;
  }

  const caches = stages.map(() => createStageCache(B));
  try {
    let batch = padBatch(fitted, cfg.padTokenId, true);
    while (true) {
      const features = runPipeline(batch, (s, k, b, h) => stageForwardCached(s, caches[k], b, h));
      const S = batch.seqLen;
      const next = pick(features, Int32Array.from({ length: B }, (_, b) => b * S + S - 1));
      features.dispose();
      if (!accept(next)) break;
      const ids = new Int32Array(B), mask = new Int32Array(B);
      for (let b = 0; b < B; b++) {
        ids[b] = done[b] ? cfg.padTokenId : next[b];
        mask[b] = done[b] ? 0 : 1;
      }
      batch = { batchSize: B, seqLen: 1, ids, mask };
    }
  } finally {
    caches.forEach(disposeStageCache);
  }
  return out;
}
