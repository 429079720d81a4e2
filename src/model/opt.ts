/**
 * The OPT decoder (Zhang et al. 2022) as Hugging Face's `OPTForCausalLM` computes it, in eval
 * mode (no dropout), on TensorFlow.js.
 *
 * A model is run as one or more *stages*: a stage holds a contiguous range of decoder layers and
 * optionally the embeddings (first stage) and the final norm + LM head (last stage). A
 * single-process model is one stage that holds everything.
 *
 * Layout. Hidden states are kept *transposed*, `[hidden, tokens]` with token n = b * S + s, so
 * that every linear layer is `W · Hᵀ` with the weight as the left operand of an untransposed
 * matMul. This is the fast matMul path of the WASM backend, and it reads the weight's memory
 * afresh on every call, which the in-place perturbation relies on (DESIGN.md, "Packed weights
 * in the WASM backend"). Biases and LayerNorm parameters are stored as `[n, 1]` columns.
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
import { type Checkpoint, loadTensor } from "./checkpoint.ts";
import {
  addBiasInPlace,
  columnLogSumExp,
  embedTransposed,
  fusedAttention,
  gatherColumns,
  layerNormTransposed,
} from "../tensor/fused.ts";
import { activeBackend, weightView } from "../tensor/backend.ts";
import { nativeMatMul } from "../tensor/blas.ts";
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

/** A loaded stage: its parameters as backend tensors (vectors stored as `[n, 1]`). */
export interface Stage {
  config: OptConfig;
  range: StageRange;
  specs: ParamSpec[];
  params: Map<string, tf.Tensor>;
  /**
   * LoRA adapters (Hu et al. 2021) keyed by the adapted linear (`…q_proj`): `lora_A.weight`
   * [r, in] and `lora_B.weight` [out, r] tensors in `params`, and the scaling alpha / r.
   */
  lora?: { scale: number; adapted: Set<string> };
}

function internalShape(spec: ParamSpec): number[] {
  return spec.shape.length === 1 ? [spec.shape[0], 1] : spec.shape;
}

/** Builds a stage from float32 arrays (one per spec, HF layout). */
export function stageFromArrays(
  config: OptConfig,
  range: StageRange,
  arrays: Map<string, Float32Array>,
): Stage {
  const specs = stageParameters(config, range);
  const params = new Map<string, tf.Tensor>();
  for (const spec of specs) {
    const data = arrays.get(spec.name);
    if (!data) throw new Error(`stage: no data for ${spec.name}`);
    params.set(spec.name, tf.tensor(data, internalShape(spec), "float32"));
  }
  return { config, range, specs, params };
}

/** Loads only the tensors of `range` from a checkpoint. */
export async function loadStage(ckpt: Checkpoint, range: StageRange): Promise<Stage> {
  const specs = stageParameters(ckpt.config, range);
  const params = new Map<string, tf.Tensor>();
  // One read buffer for the whole slice, not one per tensor (loads of several stages may
  // interleave at their awaits, so it is per call).
  const buf = new Uint8Array(LOAD_CHUNK_BYTES);
  try {
    for (const spec of specs) params.set(spec.name, await loadParam(ckpt, spec, buf));
  } catch (e) {
    for (const t of params.values()) t.dispose();
    throw e;
  }
  return { config: ckpt.config, range, specs, params };
}

/** Bytes read per chunk when a float32 tensor streams from its file into backend memory. */
const LOAD_CHUNK_BYTES = 4 << 20;

/**
 * One parameter as a backend tensor. A float32 tensor is streamed from the file straight into
 * the tensor's backend memory in 4 MiB chunks (no whole-tensor JS copy: the peak memory of
 * loading stays near the weights themselves); float16/bfloat16 go through `loadTensor`.
 */
async function loadParam(
  ckpt: Checkpoint,
  spec: ParamSpec,
  buf: Uint8Array,
): Promise<tf.Tensor> {
  const loc = ckpt.tensors.get(spec.name);
  let inPlace = loc?.entry.dtype === "F32" && loc.entry.shape.join(",") === spec.shape.join(",");
  if (inPlace) {
    try {
      inPlace = ["wasm", "cpu"].includes(activeBackend());
    } catch {
      inPlace = false;
    }
  }
  if (!loc || !inPlace) {
    const data = await loadTensor(ckpt, spec.name, spec.shape);
    return tf.tensor(data, internalShape(spec), "float32");
  }
  // tf.fill allocates in backend memory; tf.zeros would first build the zeros as a JS array
  // (51 MB for OPT-125m's embeddings), a transient copy of the weights.
  const t = tf.fill(internalShape(spec), 0, "float32");
  const file = await Deno.open(loc.path, { read: true });
  try {
    await file.seek(loc.entry.begin, Deno.SeekMode.Start);
    const total = loc.entry.byteLength;
    let done = 0;
    while (done < total) {
      const want = Math.min(buf.length, total - done);
      let got = 0;
      while (got < want) {
        const n = await file.read(buf.subarray(got, want));
        if (n === null) {
          throw new Error(
            `${loc.path}: tensor ${spec.name} is truncated (${done + got} of ${total})`,
          );
        }
        got += n;
      }
      // A fresh view after every await: backend memory may have moved meanwhile.
      const view = weightView(t);
      new Uint8Array(view.buffer, view.byteOffset + done, want).set(buf.subarray(0, want));
      done += want;
    }
  } catch (e) {
    t.dispose();
    throw e;
  } finally {
    file.close();
  }
  return t;
}

export function disposeStage(stage: Stage): void {
  for (const t of stage.params.values()) t.dispose();
  stage.params.clear();
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

function param(stage: Stage, name: string): tf.Tensor {
  const t = stage.params.get(PREFIX + name);
  if (!t) throw new Error(`stage does not hold ${PREFIX + name}`);
  return t;
}

/**
 * y = W x + b in the transposed layout: W [out, in], x [in, N], b [out, 1]; then relu when
 * `relu`. On WASM the bias (and relu) are applied in place on the fresh matMul output.
 */
function linear(
  stage: Stage,
  name: string,
  x: tf.Tensor2D,
  bias = true,
  relu = false,
): tf.Tensor2D {
  const lora = stage.lora?.adapted.has(PREFIX + name) ?? false;
  let y = tf.matMul(param(stage, `${name}.weight`) as tf.Tensor2D, x) as tf.Tensor2D;
  let activated = false;
  if (bias) {
    const b = param(stage, `${name}.bias`);
    if (addBiasInPlace(y, b, relu && !lora)) activated = relu && !lora;
    else y = tf.add(y, b) as tf.Tensor2D;
  }
  if (lora) {
    // PEFT: base(x) + lora_B(lora_A(x)) * scaling.
    const a = tf.matMul(param(stage, `${name}.lora_A.weight`) as tf.Tensor2D, x);
    const ba = tf.matMul(param(stage, `${name}.lora_B.weight`) as tf.Tensor2D, a);
    y = tf.add(y, tf.mul(ba, stage.lora!.scale)) as tf.Tensor2D;
  }
  if (relu && !activated) y = tf.relu(y) as tf.Tensor2D;
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
function layerNorm(stage: Stage, name: string, x: tf.Tensor2D): tf.Tensor2D {
  const fused = layerNormTransposed(
    x,
    param(stage, `${name}.weight`),
    param(stage, `${name}.bias`),
    1e-5,
  );
  if (fused) return fused;
  const D = x.shape[0];
  const ones = onesRow(D);
  const mean = tf.div(tf.matMul(ones, x), D);
  const centered = tf.sub(x, mean);
  const variance = tf.div(tf.matMul(ones, tf.square(centered)), D);
  const normed = tf.mul(centered, tf.rsqrt(tf.add(variance, 1e-5)));
  return tf.add(tf.mul(normed, param(stage, `${name}.weight`)), param(stage, `${name}.bias`));
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

/** Token + position embeddings (and project_in): ids -> [hidden, N]. */
function embed(stage: Stage, batch: TokenBatch): tf.Tensor2D {
  if (!stage.config.hasProjections) {
    const fused = embedTransposed(
      param(stage, "embed_tokens.weight") as tf.Tensor2D,
      param(stage, "embed_positions.weight") as tf.Tensor2D,
      batch.ids,
      positionRows(batch),
    );
    if (fused) return fused;
  }
  const ids = tf.tensor1d(batch.ids, "int32");
  const rows = tf.tensor1d(positionRows(batch), "int32");
  let tokens = tf.gather(param(stage, "embed_tokens.weight"), ids) as tf.Tensor2D; // [N, E]
  const positions = tf.gather(param(stage, "embed_positions.weight"), rows) as tf.Tensor2D;
  if (stage.config.hasProjections) {
    tokens = tf.transpose(linear(stage, "project_in", tf.transpose(tokens), false));
    return tf.transpose(tf.add(tokens, positions));
  }
  return tf.transpose(tf.add(tokens, positions));
}

/**
 * Runs a stage. The first stage takes the token ids; later stages take the previous stage's
 * output. Returns hidden states `[hidden, N]`, or for the last stage the features the LM head
 * reads (`[embedDim, N]`: after the final LayerNorm and project_out).
 */
export function stageForward(stage: Stage, batch: TokenBatch, input?: tf.Tensor2D): tf.Tensor2D {
  const { batchSize: B, seqLen: S } = batch;
  let h: tf.Tensor2D;
  if (stage.range.embeddings) h = tf.tidy(() => embed(stage, batch));
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

/** The LM head's logits transposed, `[vocab, P]`, at the given positions (one column each). */
function headLogitsT(stage: Stage, features: tf.Tensor2D, positions: Int32Array): tf.Tensor2D {
  return tf.tidy(() => {
    return tf.matMul(
      param(stage, "embed_tokens.weight") as tf.Tensor2D,
      columns(features, positions),
    );
  });
}

/** Logits `[P, vocab]` at the given token positions (n = b * S + s) of the last stage's output. */
export function logitsAt(stage: Stage, features: tf.Tensor2D, positions: Int32Array): tf.Tensor2D {
  return tf.tidy(() => tf.transpose(headLogitsT(stage, features, positions)) as tf.Tensor2D);
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
  for (let start = 0; start < unique.length; start += width) {
    const chunk = Int32Array.from(unique.slice(start, start + width));
    const P = chunk.length;
    const pairs: number[] = [];
    for (let i = 0; i < positions.length; i++) {
      const u = slot.get(positions[i])!;
      if (u >= start && u < start + P) pairs.push(i);
    }
    if (fused) {
      const sel = columns(features, chunk);
      try {
        const lp = headLogProbs(
          param(stage, "embed_tokens.weight") as tf.Tensor2D,
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
    const logits = headLogitsT(stage, features, chunk);
    try {
      const lse = columnLogSumExp(logits);
      const picked = tf.tidy(() => {
        const flat = Int32Array.from(pairs, (i) => tokens[i] * P + slot.get(positions[i])! - start);
        return tf.gather(tf.reshape(logits, [-1]), tf.tensor1d(flat, "int32"));
      });
      const values = picked.dataSync() as Float32Array;
      picked.dispose();
      pairs.forEach((i, k) => (out[i] = values[k] - lse[slot.get(positions[i])! - start]));
    } finally {
      logits.dispose();
    }
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
