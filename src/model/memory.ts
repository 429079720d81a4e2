/**
 * The memory a stage worker needs, by part, from the model's config alone (no weights read):
 * what `dpzo plan` prints per worker and what `dpzo launch` checks against this machine.
 *
 * The parts, as a worker lays out its memory:
 * - weights: every parameter of the stage (`stageParameters`: the tied `embed_tokens` on both
 *   the first and the last stage) in ordinary process memory, not the WASM heap, at `dtype`
 *   (float32: 4 bytes a parameter; bfloat16 / float16: 2);
 * - lora: with LoRA, A [r, D] and B [D, r] on q_proj and v_proj of every layer, always float32;
 * - scratch: with half storage, one float32 buffer as large as the stage's largest matrix (each
 *   matrix is widened into it as the forward reaches it; the last stage's is `embed_tokens`),
 *   and the 8 MiB the update's stochastic rounding works in (src/model/weights.ts);
 * - activations: the WASM heap's tensors at the peak of a forward over one micro-batch of
 *   N = microBatch x seqLen tokens, plus every thread's lane (src/tensor/lane.ts, LANE_BYTES);
 *   without OpenBLAS also a heap copy of the matrix being multiplied (the largest, at most);
 * - messages: hidden states in flight between pipeline stages (received and sent, at the
 *   wire's `activationDtype`, about two micro-batches each way, plus the float32 copy a stage
 *   decodes into or reads back);
 * - runtime: Deno, TensorFlow.js and its WASM backend, a V8 isolate per helper thread, and the
 *   WASM heap's initial size (which stands for its slack: the heap grows in steps).
 *
 * Activations: the peak of the heap's live tensors during a forward, measured by hooking every
 * tensor allocation (test/plan_test.ts; `dpzo bench`'s `activation_peak_bytes` used to be the
 * same figure, but its tf.profile only samples at kernel runs and so misses the products that
 * OpenBLAS writes straight from the weight store). The peak is in the MLP of a decoder layer,
 * where the layer's input h [D, N], the attention block's output h1 [D, N], the LayerNorm output
 * [D, N] and fc1's output [F, N] are live together: (3D + F) x N float32 (measured on tiny-opt,
 * D 64, F 256, and small-opt, D 256, F 1024, at 2 x 32 and 16 x 64 tokens: equal to within the
 * one bias vector copied onto the heap at a time, F floats). With LoRA the attention block holds
 * more while v_proj's adapter is added: h, its LayerNorm, q, k, v's base product, B A x, its
 * scaled copy and the sum, plus A x [r, N]: (8D + r) x N, measured the same way to the same
 * bias vector. Without LoRA the attention block (5D x N) is below the MLP in every OPT (F = 4D);
 * the LM head's peak (the final features [E, N] and the scored columns [E, P]) is below it
 * unless the vocabulary block of the WASM head ([V, 64] logits, used without OpenBLAS) is
 * larger.
 *
 * Runtime, measured with `dpzo bench --json` on tiny-opt (`rss_before_load_bytes`: the process
 * after the backend and its helper threads started, before any weight is read) with
 * DPZO_THREADS = 1, 2, 4, 8: 105.9, 122.3, 149.8, 204.4 MB, i.e. about 92 MB plus 14 MB per
 * thread; the WASM heap starts at 16 MiB. The sum of the parts against `dpzo bench`'s peak RSS,
 * weights outside the heap: small-opt at 32 x 128 tokens 247.3 MB estimated, 245.1 MB measured
 * (+1%); at 16 x 64, 225.3 and 224.9 MB.
 */
import type { OptConfig } from "./config.ts";
import { stageParameters, type StageRange } from "./opt.ts";
import { HEAD_WIDTH, LANE_BYTES } from "../tensor/lane.ts";
import { loraSpecs } from "../dpzo/lora.ts";
import { bytesPerWeight, type StorageDtype } from "./weights.ts";

/** Deno, TensorFlow.js and the WASM backend, before any weight (measured; module comment). */
export const RUNTIME_BASE_BYTES = 92e6;
/** Each thread's V8 isolate and stacks (measured; module comment). */
export const RUNTIME_THREAD_BYTES = 14e6;
/** The WASM heap's initial size (TensorFlow.js' WASM backend). */
export const BASE_HEAP_BYTES = 16 * 2 ** 20;
/** commitHalf's buffers: a chunk of 2^20 float32 values and as many rounding words. */
export const HALF_COMMIT_BYTES = 8 * 2 ** 20;
/** Micro-batches of hidden states a pipeline stage holds in flight, each way. */
export const MESSAGES_IN_FLIGHT = 2;
/** Columns of the LM head's logits block on the WASM matMul (src/model/opt.ts). */
const WASM_HEAD_COLUMNS = 64;

export interface StageMemoryOptions {
  dtype: StorageDtype;
  /** Full fine-tuning, or LoRA of `rank` on q_proj and v_proj. */
  mode: { type: "full" } | { type: "lora"; rank: number };
  /** Examples per micro-batch. */
  microBatch: number;
  /** Tokens per example (the padded length: at most the task's max_length). */
  seqLen: number;
  /** Hidden states on the wire between stages. */
  activationDtype: "float32" | "float16";
  /** Threads of the worker (src/cores, the main one included). */
  threads: number;
  /** Positions scored per micro-batch (the LM head's columns); default every token. */
  headPositions?: number;
  /**
   * Whether matMuls run on OpenBLAS (straight from the weight store, the fused LM head); default
   * true. Without it each product copies its weight onto the heap.
   */
  blas?: boolean;
}

/** A worker's memory by part, in bytes. */
export interface StageMemory {
  weights_bytes: number;
  lora_bytes: number;
  scratch_bytes: number;
  activations_bytes: number;
  messages_bytes: number;
  runtime_bytes: number;
  total_bytes: number;
}

const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

/** Parameters of a stage (the tied embedding counted on both ends, as it is held). */
export function stageParameterCount(config: OptConfig, range: StageRange): number {
  return stageParameters(config, range).reduce((n, s) => n + size(s.shape), 0);
}

/**
 * Float32 bytes of the WASM heap's tensors at the peak of a forward over `tokens` tokens (see
 * the module comment), with `headPositions` of them scored by the LM head.
 */
export function activationTensorBytes(
  config: OptConfig,
  range: StageRange,
  opts: { tokens: number; headPositions?: number; loraRank?: number; blas?: boolean },
): number {
  const { hiddenSize: D, ffnDim: F, embedDim: E, vocabSize: V } = config;
  const N = opts.tokens, blas = opts.blas ?? true;
  let floats = 0;
  if (range.endLayer > range.firstLayer) {
    // Attention: h, LN(h), q, k, v; with LoRA, while v's adapter is added: v's base product,
    // A x, B A x, its scaled copy and their sum.
    const r = opts.loraRank;
    const attention = r === undefined ? 5 * D : 8 * D + r;
    // MLP: h, h1, LN(h1), fc1's output.
    floats = Math.max(3 * D + F, attention) * N;
  }
  if (range.embeddings) floats = Math.max(floats, (D + E) * N);
  if (range.head) {
    // The features and a chunk of scored columns; without OpenBLAS, a [V, 64] block of logits
    // as well (with it the head's blocks live in the lanes).
    const P = Math.min(N, opts.headPositions ?? N, blas ? HEAD_WIDTH : WASM_HEAD_COLUMNS);
    floats = Math.max(floats, E * N + E * P + (blas ? 0 : V * P));
  }
  return floats * 4;
}

/** The memory a stage worker needs, by part (see the module comment for each part). */
export function stageMemory(
  config: OptConfig,
  range: StageRange,
  opts: StageMemoryOptions,
): StageMemory {
  const specs = stageParameters(config, range);
  const params = specs.reduce((n, s) => n + size(s.shape), 0);
  const weights = params * bytesPerWeight(opts.dtype);
  const lora = opts.mode.type === "lora"
    ? loraSpecs(config, range, opts.mode.rank).reduce((n, s) => n + size(s.shape), 0) * 4
    : 0;
  const largest = specs.reduce(
    (m, s) => (s.shape.length === 2 ? Math.max(m, size(s.shape)) : m),
    0,
  );
  const scratch = opts.dtype === "float32" ? 0 : largest * 4 + HALF_COMMIT_BYTES;
  const tokens = opts.microBatch * opts.seqLen;
  const activations = activationTensorBytes(config, range, {
    tokens,
    headPositions: opts.headPositions,
    loraRank: opts.mode.type === "lora" ? opts.mode.rank : undefined,
    blas: opts.blas,
  }) + opts.threads * LANE_BYTES + (opts.blas === false ? largest * 4 : 0);
  const hidden = config.hiddenSize * tokens;
  const wire = opts.activationDtype === "float32" ? 4 : 2;
  const ways = (range.embeddings ? 0 : 1) + (range.head ? 0 : 1);
  const messages = ways * hidden * (MESSAGES_IN_FLIGHT * wire + 4);
  const runtime = RUNTIME_BASE_BYTES + opts.threads * RUNTIME_THREAD_BYTES + BASE_HEAP_BYTES;
  return {
    weights_bytes: weights,
    lora_bytes: lora,
    scratch_bytes: scratch,
    activations_bytes: activations,
    messages_bytes: messages,
    runtime_bytes: runtime,
    total_bytes: weights + lora + scratch + activations + messages + runtime,
  };
}
