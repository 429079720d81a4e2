/**
 * The OPT decoder (Zhang et al. 2022) as Hugging Face's `OPTForCausalLM` computes it, in eval
 * mode (no dropout), on TensorFlow.js.
 *
 * A model is run as one or more *stages*: a stage holds a contiguous range of decoder layers and
 * optionally the embeddings (first stage) and the final norm + LM head (last stage). A
 * single-process model is one stage that holds everything.
 *
 * Weights. A stage's parameters live outside TensorFlow.js' WASM heap, in its weight store
 * (src/model/weights.ts: process memory, float32 or half precision), so a stage is as large as
 * its machine. The forward reads them there: OpenBLAS multiplies straight from a float32
 * weight's memory; half weights are widened (with the step's perturbation) as they are reached;
 * biases and LayerNorm parameters are copied onto the heap as `[n, 1]` columns when used;
 * embedding rows are gathered. Only activations and scratch live on the heap.
 *
 * Layout. Hidden states are kept *transposed*, `[hidden, tokens]` with token n = b * S + s, so
 * that every linear layer is `W · Hᵀ` with the weight as the left operand of an untransposed
 * matMul: the fast path of the WASM backend, which reads the left operand afresh on every call.
 *
 * Semantics pinned by ../shared/fixtures (reference.json from transformers 4.28):
 * - positions from the attention mask: pos = cumsum(mask) * mask - 1, row pos + 2;
 * - q = q_proj(x) * head_dim^-0.5; masked scores are float32 min; softmax in float32;
 * - pre-LN: x + attn(LN(x)), x + fc2(relu(fc1(LN(x)))), final LN; post-LN: LN after each sum;
 * - project_in before adding positions, project_out after the final LN;
 * - logits = h · embed_tokensᵀ (tied LM head).
 */
import * as tf from "@tensorflow/tfjs-core";
import type { OptConfig } from "./config.ts";
import {
  float32Array,
  readRows,
  readWeight,
  type StorageDtype,
  type StoredWeight,
  type VirtualPerturbation,
} from "./weights.ts";
import {
  addBiasInPlace,
  columnLogSumExp,
  embedTransposed,
  fusedAttention,
  gatherColumns,
  layerNormTransposed,
} from "../tensor/fused.ts";
import { matMulRaw, nativeMatMul } from "../tensor/blas.ts";
import { activeBackend, weightView } from "../tensor/backend.ts";
import { HEAD_WIDTH, headLogProbs } from "../tensor/head.ts";

/** Which part of the model a stage holds. Layers are [firstLayer, endLayer). */
export interface StageRange {
  firstLayer: number;
  endLayer: number;
  embeddings: boolean;
  head: boolean;
}

export function wholeModel(config: OptConfig): StageRange {
  return { firstLayer: 0, endLayer: config.numLayers, embeddings: true, head: true };
}

export type ParamKind = "weight" | "bias" | "norm" | "embedding";

/** A parameter as Hugging Face names and shapes it. */
export interface ParamSpec {
  name: string;
  shape: number[];
  kind: ParamKind;
}

const PREFIX = "model.decoder.";

/** The parameters of a stage in canonical order (the order of HF's `named_parameters()`). */
export function stageParameters(config: OptConfig, range: StageRange): ParamSpec[] {
  const D = config.hiddenSize, E = config.embedDim, F = config.ffnDim;
  const specs: ParamSpec[] = [];
  const add = (name: string, shape: number[], kind: ParamKind) =>
    specs.push({ name: PREFIX + name, shape, kind });
  // The tied embedding lives on the first stage and (as a copy) on the last.
  if (range.embeddings || range.head) {
    add("embed_tokens.weight", [config.vocabSize, E], "embedding");
  }
  if (range.embeddings) {
    add("embed_positions.weight", [config.maxPositions + 2, D], "embedding");
  }
  if (range.head && config.hasProjections) add("project_out.weight", [E, D], "weight");
  if (range.embeddings && config.hasProjections) add("project_in.weight", [D, E], "weight");
  if (range.head && config.hasFinalLayerNorm) {
    add("final_layer_norm.weight", [D], "norm");
    add("final_layer_norm.bias", [D], "norm");
  }
  for (let l = range.firstLayer; l < range.endLayer; l++) {
    const p = `layers.${l}.`;
    for (const proj of ["k_proj", "v_proj", "q_proj", "out_proj"]) {
      add(`${p}self_attn.${proj}.weight`, [D, D], "weight");
      add(`${p}self_attn.${proj}.bias`, [D], "bias");
    }
    add(`${p}self_attn_layer_norm.weight`, [D], "norm");
    add(`${p}self_attn_layer_norm.bias`, [D], "norm");
    add(`${p}fc1.weight`, [F, D], "weight");
    add(`${p}fc1.bias`, [F], "bias");
    add(`${p}fc2.weight`, [D, F], "weight");
    add(`${p}fc2.bias`, [D], "bias");
    add(`${p}final_layer_norm.weight`, [D], "norm");
    add(`${p}final_layer_norm.bias`, [D], "norm");
  }
  return specs;
}

/** A loaded stage: its parameters in its weight store (src/model/weights.ts). */
export interface Stage {
  config: OptConfig;
  range: StageRange;
  specs: ParamSpec[];
  /** Every parameter by name, Hugging Face layout (row-major, HF shape), outside the heap. */
  weights: Map<string, StoredWeight>;
  /** How the base weights are stored; LoRA adapters are always float32. */
  dtype: StorageDtype;
  /**
   * The perturbation in force for half-stored trainable weights, which is never written into
   * their store (src/model/weights.ts); the stage worker sets it.
   */
  virtual?: VirtualPerturbation;
  /**
   * LoRA adapters (Hu et al. 2021) keyed by the adapted linear (`…q_proj`): `lora_A.weight`
   * [r, in] and `lora_B.weight` [out, r] float32 tensors in `weights`, and the scaling alpha / r.
   */
  lora?: { scale: number; adapted: Set<string> };
}

/** Elements of a parameter. */
export function sizeOf(spec: ParamSpec): number {
  return spec.shape.reduce((a, b) => a * b, 1);
}

/** Lets go of a stage's weights (their memory is freed once nothing else holds them). */
export function disposeStage(stage: Stage): void {
  stage.weights.clear();
}

/** A right- or left-padded batch of token ids, flattened row by row (B rows of S tokens). */
export interface TokenBatch {
  batchSize: number;
  seqLen: number;
  ids: Int32Array;
  /** 1 for real tokens, 0 for padding. */
  mask: Int32Array;
}

/** Position-embedding rows from the attention mask: cumsum(mask) * mask - 1 + 2. */
export function positionRows(batch: TokenBatch): Int32Array {
  const { batchSize: B, seqLen: S, mask } = batch;
  const rows = new Int32Array(B * S);
  for (let b = 0; b < B; b++) {
    let c = 0;
    for (let s = 0; s < S; s++) {
      const m = mask[b * S + s];
      c += m;
      rows[b * S + s] = c * m - 1 + 2;
    }
  }
  return rows;
}

const F32_MIN = -3.4028234663852886e38;

/** The masks of a batch: key padding (int32 `[B * S]`) and, on demand, the additive form. */
interface BatchMasks {
  keys: tf.Tensor1D;
  additive(): tf.Tensor4D;
}

/** The last batch's masks, kept for the next forward with the same shape and padding mask. */
let maskCache:
  | { B: number; S: number; mask: Int32Array; keys: tf.Tensor1D; additive?: tf.Tensor4D }
  | undefined;

/**
 * The attention masks of a batch. Cached (kept, owned by this module) while the batch shape and
 * padding mask stay the same, as they do for the two forwards of a ZO step; callers must not
 * dispose them. The additive mask `[B, 1, S, S]` (0 where query i may see key j, float32 min
 * elsewhere) is only built for the tfjs-ops attention path.
 */
function batchMasks(batch: TokenBatch): BatchMasks {
  const { batchSize: B, seqLen: S, mask } = batch;
  let c = maskCache;
  if (
    !c || c.keys.isDisposed || c.B !== B || c.S !== S || c.mask.length !== mask.length ||
    !c.mask.every((v, i) => v === mask[i])
  ) {
    if (c) {
      if (!c.keys.isDisposed) c.keys.dispose();
      if (c.additive && !c.additive.isDisposed) c.additive.dispose();
    }
    const keys = tf.keep(tf.tensor1d(Int32Array.from(mask, (m) => (m === 1 ? 1 : 0)), "int32"));
    c = maskCache = { B, S, mask: Int32Array.from(mask), keys };
  }
  const entry = c;
  return {
    keys: entry.keys,
    additive: () => {
      if (!entry.additive || entry.additive.isDisposed) {
        const m = new Float32Array(B * S * S);
        for (let b = 0; b < B; b++) {
          for (let i = 0; i < S; i++) {
            for (let j = 0; j < S; j++) {
              const visible = j <= i && mask[b * S + j] === 1;
              m[(b * S + i) * S + j] = visible ? 0 : F32_MIN;
            }
          }
        }
        entry.additive = tf.keep(tf.tensor4d(m, [B, 1, S, S]));
      }
      return entry.additive;
    },
  };
}

/** The stored array of a parameter, or an error naming it. */
function weightOf(stage: Stage, name: string): Float32Array {
  return readWeight(stage, PREFIX + name);
}

/**
 * A small parameter (bias, LayerNorm) as a heap tensor `[n, 1]` (a copy of its float32 values,
 * perturbed as the stage's weights are): dispose it (or make it inside a tidy).
 */
export function vectorParam(stage: Stage, name: string): tf.Tensor2D {
  const data = weightOf(stage, name);
  return tf.tensor2d(data, [data.length, 1]);
}

/**
 * W · x for a weight W `[out, in]` of the stage and x `[in, N]`: OpenBLAS straight from the
 * weight's memory when it is on (src/tensor/blas.ts `matMulRaw`), else through a heap copy of
 * the weight made for this product.
 */
export function weightTimes(stage: Stage, name: string, x: tf.Tensor2D): tf.Tensor2D {
  const w = weightOf(stage, name);
  const K = x.shape[0], M = w.length / K;
  if (!Number.isInteger(M)) throw new Error(`${PREFIX + name}: ${w.length} values, input [${K}]`);
  const direct = matMulRaw(w, M, K, x);
  if (direct) return direct;
  return tf.tidy(() => tf.matMul(tf.tensor2d(w, [M, K]), x));
}

/**
 * y = W x + b in the transposed layout: W [out, in], x [in, N], b [out, 1]; then relu when
 * `relu`. On WASM the bias (and relu) are applied in place on the fresh matMul output.
 */
export function linear(
  stage: Stage,
  name: string,
  x: tf.Tensor2D,
  bias = true,
  relu = false,
): tf.Tensor2D {
  const lora = stage.lora?.adapted.has(PREFIX + name) ?? false;
  let y = weightTimes(stage, `${name}.weight`, x);
  let activated = false;
  if (bias) {
    const b = vectorParam(stage, `${name}.bias`);
    if (addBiasInPlace(y, b, relu && !lora)) activated = relu && !lora;
    else {
      const sum = tf.add(y, b) as tf.Tensor2D;
      y.dispose();
      y = sum;
    }
    b.dispose();
  }
  if (lora) {
    // PEFT: base(x) + lora_B(lora_A(x)) * scaling.
    const a = weightTimes(stage, `${name}.lora_A.weight`, x);
    const ba = weightTimes(stage, `${name}.lora_B.weight`, a);
    const sum = tf.tidy(() => tf.add(y, tf.mul(ba, stage.lora!.scale))) as tf.Tensor2D;
    tf.dispose([a, ba, y]);
    y = sum;
  }
  if (relu && !activated) {
    const r = tf.relu(y) as tf.Tensor2D;
    y.dispose();
    y = r;
  }
  return y;
}

/** A kept `[1, n]` row of ones (the left operand of column sums), one per length. */
const onesRows = new Map<number, tf.Tensor2D>();
function onesRow(n: number): tf.Tensor2D {
  let t = onesRows.get(n);
  if (!t || t.isDisposed) {
    t = tf.keep(tf.ones([1, n]) as tf.Tensor2D);
    onesRows.set(n, t);
  }
  return t;
}

/**
 * LayerNorm over the hidden axis (axis 0), eps 1e-5, biased variance, as torch. The column
 * means are `ones[1, D] · x / D` (the fast untransposed matMul); `tf.moments` over axis 0
 * transposes internally and was 16x slower.
 */
export function layerNorm(stage: Stage, name: string, x: tf.Tensor2D): tf.Tensor2D {
  return tf.tidy(() => {
    const weight = vectorParam(stage, `${name}.weight`), bias = vectorParam(stage, `${name}.bias`);
    const fused = layerNormTransposed(x, weight, bias, 1e-5);
    if (fused) return fused;
    const D = x.shape[0];
    const ones = onesRow(D);
    const mean = tf.div(tf.matMul(ones, x), D);
    const centered = tf.sub(x, mean);
    const variance = tf.div(tf.matMul(ones, tf.square(centered)), D);
    const normed = tf.mul(centered, tf.rsqrt(tf.add(variance, 1e-5)));
    return tf.add(tf.mul(normed, weight), bias) as tf.Tensor2D;
  });
}

function selfAttention(
  stage: Stage,
  prefix: string,
  x: tf.Tensor2D,
  masks: BatchMasks,
  B: number,
  S: number,
  release = false,
): tf.Tensor2D {
  const { hiddenSize: D, numHeads: H, headDim: hd } = stage.config;
  const scale = hd ** -0.5; // Hugging Face scales q_proj's output by it
  const qRaw = linear(stage, `${prefix}.q_proj`, x);
  const k = linear(stage, `${prefix}.k_proj`, x);
  const v = linear(stage, `${prefix}.v_proj`, x);
  // The fused kernels on the WASM backend; tfjs ops elsewhere (same semantics).
  const fused = fusedAttention(qRaw, k, v, masks.keys, B, S, H, hd, { scale });
  if (fused) {
    // Free what is no longer read before out_proj allocates (see decoderLayer).
    tf.dispose(release ? [x, qRaw, k, v] : [qRaw, k, v]);
    const out = linear(stage, `${prefix}.out_proj`, fused);
    fused.dispose();
    return out;
  }
  const q = tf.mul(qRaw, scale) as tf.Tensor2D;
  const mask = masks.additive();
  // [D, B*S] = [H, hd, B, S] -> per (b, h) matrices.
  const Q = tf.reshape(tf.transpose(tf.reshape(q, [H, hd, B, S]), [2, 0, 3, 1]), [B * H, S, hd]);
  const Kt = tf.reshape(tf.transpose(tf.reshape(k, [H, hd, B, S]), [2, 0, 1, 3]), [B * H, hd, S]);
  const V = tf.reshape(tf.transpose(tf.reshape(v, [H, hd, B, S]), [2, 0, 3, 1]), [B * H, S, hd]);
  const scores = tf.reshape(tf.matMul(Q, Kt), [B, H, S, S]);
  const masked = tf.maximum(tf.add(scores, mask), F32_MIN);
  const probs = tf.reshape(tf.softmax(masked), [B * H, S, S]);
  const ctx = tf.reshape(tf.matMul(probs, V), [B, H, S, hd]);
  const ctxT = tf.reshape(tf.transpose(ctx, [1, 3, 0, 2]), [D, B * S]) as tf.Tensor2D;
  return linear(stage, `${prefix}.out_proj`, ctxT);
}

function decoderLayer(
  stage: Stage,
  l: number,
  h: tf.Tensor2D,
  masks: BatchMasks,
  B: number,
  S: number,
): tf.Tensor2D {
  // Each block runs in its own tidy: only its output outlives it, so the backend heap holds
  // one block's intermediates at a time (the heap never shrinks: this bounds its peak). Within
  // a block, each `[*, N]` intermediate is freed as soon as its consumer has run (`release`:
  // the block made x and may free it), which keeps the peak lower still.
  const p = `layers.${l}`;
  const mlp = (x: tf.Tensor2D, release: boolean) => {
    const a = linear(stage, `${p}.fc1`, x, true, true);
    if (release) x.dispose();
    const y = linear(stage, `${p}.fc2`, a);
    a.dispose();
    return y;
  };
  const attn = (x: tf.Tensor2D, release: boolean) =>
    selfAttention(stage, `${p}.self_attn`, x, masks, B, S, release);
  if (stage.config.preLayerNorm) {
    const h1 = tf.tidy(() =>
      tf.add(h, attn(layerNorm(stage, `${p}.self_attn_layer_norm`, h), true))
    ) as tf.Tensor2D;
    const h2 = tf.tidy(() => tf.add(h1, mlp(layerNorm(stage, `${p}.final_layer_norm`, h1), true)));
    h1.dispose();
    return h2 as tf.Tensor2D;
  }
  const h1 = tf.tidy(() =>
    layerNorm(stage, `${p}.self_attn_layer_norm`, tf.add(h, attn(h, false)))
  );
  const h2 = tf.tidy(() => layerNorm(stage, `${p}.final_layer_norm`, tf.add(h1, mlp(h1, false))));
  h1.dispose();
  return h2;
}

/**
 * Rows `rows` of an embedding table `[R, width]` of the stage as a heap tensor `[n, width]`,
 * gathered from the weight store (perturbed as the stage's weights are).
 */
export function embeddingRows(
  stage: Stage,
  name: string,
  width: number,
  rows: Int32Array,
): tf.Tensor2D {
  if (activeBackend() === "tensorflow") {
    const out = float32Array(rows.length * width);
    readRows(stage, PREFIX + name, width, rows, out);
    return tf.tensor2d(out, [rows.length, width]);
  }
  // Straight into the backend's memory: no JS copy per forward (it piled up as garbage).
  const t = tf.fill([rows.length, width], 0) as tf.Tensor2D;
  readRows(stage, PREFIX + name, width, rows, weightView(t));
  return t;
}

/**
 * Token + position embeddings (and project_in) of token ids `ids` at position-embedding rows
 * `rows` (`positionRows`): `[hidden, N]`.
 */
export function embedTokens(stage: Stage, ids: Int32Array, rows: Int32Array): tf.Tensor2D {
  const { embedDim: E, hiddenSize: D } = stage.config;
  return tf.tidy(() => {
    const tokens = embeddingRows(stage, "embed_tokens.weight", E, ids); // [N, E]
    const positions = embeddingRows(stage, "embed_positions.weight", D, rows); // [N, D]
    if (!stage.config.hasProjections) {
      const n = Int32Array.from({ length: ids.length }, (_, i) => i);
      const fused = embedTransposed(tokens, positions, n, n);
      if (fused) return fused;
      return tf.transpose(tf.add(tokens, positions)) as tf.Tensor2D;
    }
    const projected = linear(stage, "project_in", tf.transpose(tokens) as tf.Tensor2D, false);
    return tf.add(projected, tf.transpose(positions)) as tf.Tensor2D;
  });
}

/** Token + position embeddings (and project_in): ids -> [hidden, N]. */
function embed(stage: Stage, batch: TokenBatch): tf.Tensor2D {
  return embedTokens(stage, batch.ids, positionRows(batch));
}

/**
 * Runs a stage. The first stage takes the token ids; later stages take the previous stage's
 * output. Returns hidden states `[hidden, N]`, or for the last stage the features the LM head
 * reads (`[embedDim, N]`: after the final LayerNorm and project_out).
 */
export function stageForward(stage: Stage, batch: TokenBatch, input?: tf.Tensor2D): tf.Tensor2D {
  const { batchSize: B, seqLen: S } = batch;
  let h: tf.Tensor2D;
  if (stage.range.embeddings) h = embed(stage, batch);
  else if (input) h = input;
  else {
    throw new Error("stageForward: a stage without embeddings needs the previous hidden states");
  }
  const masks = batchMasks(batch);
  // Layer by layer, freeing the previous hidden states (never the caller's input).
  const step = (f: (x: tf.Tensor2D) => tf.Tensor2D) => {
    const next = f(h);
    if (h !== input) h.dispose();
    h = next;
  };
  try {
    for (let l = stage.range.firstLayer; l < stage.range.endLayer; l++) {
      step((x) => decoderLayer(stage, l, x, masks, B, S));
    }
    if (stage.range.head) {
      if (stage.config.hasFinalLayerNorm) {
        step((x) => tf.tidy(() => layerNorm(stage, "final_layer_norm", x)));
      }
      if (stage.config.hasProjections) {
        step((x) => tf.tidy(() => linear(stage, "project_out", x, false)));
      }
    }
  } catch (e) {
    if (h !== input) h.dispose();
    throw e;
  }
  // The caller owns the result; hand back a distinct tensor even for a stage with no layers.
  return h === input ? tf.clone(h) : h;
}

/**
 * How many positions the LM head handles at once on the WASM matMul. It bounds the
 * `[vocab, chunk]` logits block (OPT's vocabulary: 12.9 MB at 64); 64 is the fastest width of
 * the WASM backend's `[V, E] · [E, P]` matMul (small-opt: ~33 GFLOP/s; 16-20 at 128-512). With
 * the native matMul the head runs fused instead (src/tensor/head.ts), HEAD_WIDTH at once.
 */
const WASM_HEAD_CHUNK = 64;

/** Columns `cols` of `[E, N]` features (the positions the LM head reads). */
function columns(features: tf.Tensor2D, cols: Int32Array): tf.Tensor2D {
  return gatherColumns(features, cols) ??
    tf.tidy(() => tf.gather(features, tf.tensor1d(cols, "int32"), 1) as tf.Tensor2D);
}

/**
 * The tied LM head's weight (`embed_tokens`, `[vocab, E]`) as a heap tensor, for the paths that
 * run it through tfjs' matMul (no native matMul): made once per call of the caller.
 */
function headWeightTensor(stage: Stage): tf.Tensor2D {
  const w = weightOf(stage, "embed_tokens.weight");
  return tf.tensor2d(w, [stage.config.vocabSize, stage.config.embedDim]);
}

/** The LM head's logits transposed, `[vocab, P]`, at the given positions (one column each). */
function headLogitsT(
  stage: Stage,
  features: tf.Tensor2D,
  positions: Int32Array,
  weight?: tf.Tensor2D,
): tf.Tensor2D {
  const cols = columns(features, positions);
  try {
    if (weight) return tf.matMul(weight, cols);
    return weightTimes(stage, "embed_tokens.weight", cols);
  } finally {
    cols.dispose();
  }
}

/** Logits `[P, vocab]` at the given token positions (n = b * S + s) of the last stage's output. */
export function logitsAt(stage: Stage, features: tf.Tensor2D, positions: Int32Array): tf.Tensor2D {
  const t = headLogitsT(stage, features, positions);
  try {
    return tf.transpose(t) as tf.Tensor2D;
  } finally {
    t.dispose();
  }
}

/**
 * Log-probabilities log softmax(logits[position])[token] for (position, token) pairs. Each
 * distinct position goes through the LM head once, and only the requested positions do.
 *
 * With the native matMul the head is fused (`headLogProbs`, src/tensor/head.ts): the logits
 * are made and reduced block by block of the vocabulary on every thread and never stored whole.
 * Otherwise the logits stay in the layout the matMul writes, `[vocab, chunk]`, and the
 * log-sum-exp over the vocabulary runs along axis 0 (`columnLogSumExp`, a streaming kernel on
 * the WASM heap), so no `[vocab, chunk]` transpose or temporary is made.
 */
export function logProbsAt(
  stage: Stage,
  features: tf.Tensor2D,
  positions: Int32Array,
  tokens: Int32Array,
): Float32Array {
  const unique = [...new Set(positions)];
  const slot = new Map(unique.map((p, i) => [p, i]));
  const out = new Float32Array(positions.length);
  const fused = nativeMatMul()?.enabled ?? false;
  const width = fused ? HEAD_WIDTH : WASM_HEAD_CHUNK;
  // Read once for every chunk: a half-stored head is widened (and perturbed) once per call.
  const headWeight = fused ? weightOf(stage, "embed_tokens.weight") : undefined;
  const weightTensor = fused ? undefined : headWeightTensor(stage);
  try {
    for (let start = 0; start < unique.length; start += width) {
      const chunk = Int32Array.from(unique.slice(start, start + width));
      const P = chunk.length;
      const pairs: number[] = [];
      for (let i = 0; i < positions.length; i++) {
        const u = slot.get(positions[i])!;
        if (u >= start && u < start + P) pairs.push(i);
      }
      if (headWeight) {
        const sel = columns(features, chunk);
        try {
          const lp = headLogProbs(
            headWeight,
            sel as tf.Tensor2D,
            Int32Array.from(pairs, (i) => slot.get(positions[i])! - start),
            Int32Array.from(pairs, (i) => tokens[i]),
          )!;
          pairs.forEach((i, k) => (out[i] = lp[k]));
        } finally {
          sel.dispose();
        }
        continue;
      }
      const logits = headLogitsT(stage, features, chunk, weightTensor);
      try {
        const lse = columnLogSumExp(logits);
        const picked = tf.tidy(() => {
          const flat = Int32Array.from(
            pairs,
            (i) => tokens[i] * P + slot.get(positions[i])! - start,
          );
          return tf.gather(tf.reshape(logits, [-1]), tf.tensor1d(flat, "int32"));
        });
        const values = picked.dataSync() as Float32Array;
        picked.dispose();
        pairs.forEach((i, k) => (out[i] = values[k] - lse[slot.get(positions[i])! - start]));
      } finally {
        logits.dispose();
      }
    }
  } finally {
    weightTensor?.dispose();
  }
  return out;
}

/**
 * Next-token cross-entropy (nats) at each position: -log softmax(logits[position])[target].
 * Only the requested positions go through the LM head.
 */
export function crossEntropyAt(
  stage: Stage,
  features: tf.Tensor2D,
  positions: Int32Array,
  targets: Int32Array,
): Float32Array {
  const lp = logProbsAt(stage, features, positions, targets);
  for (let i = 0; i < lp.length; i++) lp[i] = -lp[i];
  return lp;
}

/** The next-token targets of a batch: every real position whose next token is real. */
export function nextTokenTargets(
  batch: TokenBatch,
): { positions: Int32Array; targets: Int32Array; row: Int32Array } {
  const { batchSize: B, seqLen: S, ids, mask } = batch;
  const positions: number[] = [], targets: number[] = [], row: number[] = [];
  for (let b = 0; b < B; b++) {
    for (let s = 0; s + 1 < S; s++) {
      const n = b * S + s;
      if (mask[n] === 1 && mask[n + 1] === 1) {
        positions.push(n);
        targets.push(ids[n + 1]);
        row.push(b);
      }
    }
  }
  return {
    positions: Int32Array.from(positions),
    targets: Int32Array.from(targets),
    row: Int32Array.from(row),
  };
}

/** Mean next-token cross-entropy per row (float32 per-token CE, mean in float32 as torch). */
export function meanPerRow(ce: Float32Array, row: Int32Array, batchSize: number): Float32Array {
  const sum = new Float64Array(batchSize), count = new Float64Array(batchSize);
  for (let i = 0; i < ce.length; i++) {
    sum[row[i]] += ce[i];
    count[row[i]] += 1;
  }
  const out = new Float32Array(batchSize);
  for (let b = 0; b < batchSize; b++) out[b] = count[b] > 0 ? sum[b] / count[b] : NaN;
  return out;
}

/** Pads token sequences into a batch (right padding unless `left`). */
export function padBatch(
  sequences: number[][],
  padId: number,
  left = false,
  seqLen?: number,
): TokenBatch {
  const B = sequences.length;
  const S = seqLen ?? Math.max(1, ...sequences.map((s) => s.length));
  const ids = new Int32Array(B * S).fill(padId);
  const mask = new Int32Array(B * S);
  sequences.forEach((seq, b) => {
    if (seq.length > S) throw new Error(`padBatch: sequence of ${seq.length} tokens exceeds ${S}`);
    const offset = left ? S - seq.length : 0;
    for (let i = 0; i < seq.length; i++) {
      ids[b * S + offset + i] = seq[i];
      mask[b * S + offset + i] = 1;
    }
  });
  return { batchSize: B, seqLen: S, ids, mask };
}
