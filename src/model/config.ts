/**
 * OPT model configuration: `config.json` of a Hugging Face OPT checkpoint, validated with zod
 * and turned into the few numbers the forward pass needs.
 *
 * Covers every released OPT variant: pre-LN (`do_layer_norm_before: true`, all but opt-350m)
 * and post-LN (opt-350m), and `word_embed_proj_dim != hidden_size` (opt-350m: project_in and
 * project_out around the decoder).
 */
import { z } from "zod";
import { formatZodError } from "../validation.ts";

const RawConfig = z.object({
  model_type: z.literal("opt", { error: 'model_type must be "opt"' }).optional(),
  vocab_size: z.number().int().positive(),
  hidden_size: z.number().int().positive(),
  num_hidden_layers: z.number().int().positive(),
  ffn_dim: z.number().int().positive(),
  num_attention_heads: z.number().int().positive(),
  max_position_embeddings: z.number().int().positive(),
  do_layer_norm_before: z.boolean().default(true),
  word_embed_proj_dim: z.number().int().positive().optional(),
  activation_function: z.literal("relu", { error: "only relu is supported (as in all OPT)" })
    .default("relu"),
  enable_bias: z.literal(true, { error: "enable_bias=false is not supported" }).default(true),
  layer_norm_elementwise_affine: z.literal(true, {
    error: "layer_norm_elementwise_affine=false is not supported",
  }).default(true),
  pad_token_id: z.number().int().nonnegative().default(1),
  bos_token_id: z.number().int().nonnegative().default(2),
  eos_token_id: z.number().int().nonnegative().default(2),
  _remove_final_layer_norm: z.boolean().default(false),
});

export interface OptConfig {
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  ffnDim: number;
  numHeads: number;
  headDim: number;
  maxPositions: number;
  /** Pre-LN (true) or post-LN (false) decoder layers. */
  preLayerNorm: boolean;
  /** Width of the token embeddings; differs from hiddenSize when project_in/out exist. */
  embedDim: number;
  hasProjections: boolean;
  hasFinalLayerNorm: boolean;
  padTokenId: number;
  bosTokenId: number;
  eosTokenId: number;
}

/** Parses a config.json object; `source` names the file in errors. */
export function parseOptConfig(raw: unknown, source = "config.json"): OptConfig {
  const r = RawConfig.safeParse(raw);
  if (!r.success) throw new Error(`${source}: ${formatZodError(r.error)}`);
  const c = r.data;
  if (c.hidden_size % c.num_attention_heads !== 0) {
    throw new Error(
      `${source}: hidden_size (${c.hidden_size}) must be divisible by num_attention_heads ` +
        `(${c.num_attention_heads})`,
    );
  }
  const embedDim = c.word_embed_proj_dim ?? c.hidden_size;
  return {
    vocabSize: c.vocab_size,
    hiddenSize: c.hidden_size,
    numLayers: c.num_hidden_layers,
    ffnDim: c.ffn_dim,
    numHeads: c.num_attention_heads,
    headDim: c.hidden_size / c.num_attention_heads,
    maxPositions: c.max_position_embeddings,
    preLayerNorm: c.do_layer_norm_before,
    embedDim,
    hasProjections: embedDim !== c.hidden_size,
    hasFinalLayerNorm: c.do_layer_norm_before && !c._remove_final_layer_norm,
    padTokenId: c.pad_token_id,
    bosTokenId: c.bos_token_id,
    eosTokenId: c.eos_token_id,
  };
}

/** Reads and validates `DIR/config.json`. */
export async function loadOptConfig(modelDir: string): Promise<OptConfig> {
  return await readOptConfig(`${modelDir}/config.json`);
}

/** Reads and validates a config.json file. */
export async function readOptConfig(path: string): Promise<OptConfig> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Error(`${path}: not found; a model directory needs the config.json of the model`);
    }
    throw e;
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new Error(`${path}: not valid JSON (${(e as Error).message})`);
  }
  return parseOptConfig(raw, path);
}
