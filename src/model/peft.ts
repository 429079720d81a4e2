/**
 * PEFT's LoRA adapter format (Hugging Face `peft`), as `dpzo export` writes it and as dpzo
 * recognises it in a model folder.
 *
 * An adapter folder holds `adapter_config.json` (`peft_type: "LORA"`, `r`, `lora_alpha`,
 * `target_modules`, `base_model_name_or_path`) and `adapter_model.safetensors`, whose keys are
 * the model's parameter names behind PEFT's `base_model.model.` prefix, without the adapter
 * name: `base_model.model.model.decoder.layers.0.self_attn.q_proj.lora_A.weight`.
 *
 * Merging (PEFT's `merge_and_unload`): W' = W + (lora_alpha / r) B A for every adapted linear,
 * with A [r, in] and B [out, r]. A merged model is an ordinary checkpoint that
 * `AutoModelForCausalLM.from_pretrained` and `dpzo --model` load.
 *
 * dpzo reads models, not adapters: a folder with `adapter_config.json` is refused with a line
 * naming the fix, never read as its base model. transformers would not read such a folder's
 * `model.safetensors` either: it loads `base_model_name_or_path` and applies the adapter. That is
 * why `dpzo export` puts the adapter of a merged model in a subfolder, `adapter/`.
 */
import { z } from "zod";

export const ADAPTER_CONFIG_FILE = "adapter_config.json";
export const ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors";
/** The subfolder of a merged export that holds its adapter. */
export const ADAPTER_SUBDIR = "adapter";
/** What PEFT puts before a parameter name (PeftModel -> LoraModel -> the transformers model). */
export const PEFT_PREFIX = "base_model.model.";

/** The fields of adapter_config.json dpzo writes and reads (PEFT's LoraConfig has more). */
const AdapterConfig = z.object({
  peft_type: z.string(),
  r: z.number().optional(),
  lora_alpha: z.number().optional(),
  base_model_name_or_path: z.string().nullish(),
}).passthrough();

export interface AdapterSpec {
  rank: number;
  alpha: number;
  targets: readonly string[];
  /** A Hub id or a path: what PEFT and transformers load the base from. */
  base: string;
  /** The Hub commit of the base, when it came from the Hub. */
  revision?: string | null;
}

/** adapter_config.json of a LoRA adapter, with PEFT's defaults written out. */
export function adapterConfig(spec: AdapterSpec): Record<string, unknown> {
  return {
    peft_type: "LORA",
    task_type: "CAUSAL_LM",
    base_model_name_or_path: spec.base,
    revision: spec.revision ?? null,
    r: spec.rank,
    lora_alpha: spec.alpha,
    lora_dropout: 0,
    target_modules: [...spec.targets],
    bias: "none",
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    modules_to_save: null,
    use_rslora: false,
    use_dora: false,
    rank_pattern: {},
    alpha_pattern: {},
  };
}

/** `model.decoder.layers.0.self_attn.q_proj.lora_A.weight` -> its adapter file key. */
export function adapterKey(name: string): string {
  return PEFT_PREFIX + name;
}

/**
 * The merged weight W + scale B A of a linear [out, in], with A [r, in] and B [out, r], all
 * row-major float32 (Hugging Face layout). B A is summed in float64 and each element rounded
 * once to float32, so the result is the exact merge to within float32 rounding.
 */
export function mergeLora(
  w: Float32Array,
  a: Float32Array,
  b: Float32Array,
  shape: { out: number; in: number; rank: number },
  scale: number,
): Float32Array {
  const { out, in: inDim, rank } = shape;
  if (w.length !== out * inDim || a.length !== rank * inDim || b.length !== out * rank) {
    throw new Error(
      `LoRA merge: shapes disagree (W ${w.length} = ${out}x${inDim}, A ${a.length} = ` +
        `${rank}x${inDim}, B ${b.length} = ${out}x${rank})`,
    );
  }
  const merged = new Float32Array(w.length);
  const row = new Float64Array(inDim);
  for (let o = 0; o < out; o++) {
    row.fill(0);
    for (let k = 0; k < rank; k++) {
      const bk = b[o * rank + k];
      if (bk === 0) continue;
      const aRow = k * inDim;
      for (let i = 0; i < inDim; i++) row[i] += bk * a[aRow + i];
    }
    const wRow = o * inDim;
    for (let i = 0; i < inDim; i++) merged[wRow + i] = w[wRow + i] + scale * row[i];
  }
  return merged;
}

async function readConfig(path: string): Promise<z.infer<typeof AdapterConfig> | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) return null;
    throw e;
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return { peft_type: "unknown (not valid JSON)" };
  }
  const r = AdapterConfig.safeParse(raw);
  return r.success ? r.data : { peft_type: "unknown" };
}

/**
 * Why `dir` cannot be read as a model because it holds a PEFT adapter (one line naming the fix),
 * or null when it has no adapter_config.json.
 */
export async function adapterFolderProblem(dir: string): Promise<string | null> {
  const cfg = await readConfig(`${dir}/${ADAPTER_CONFIG_FILE}`);
  if (!cfg) return null;
  const base = cfg.base_model_name_or_path ?? "(its base_model_name_or_path is empty)";
  const what = cfg.peft_type === "LORA"
    ? `a LoRA adapter (${ADAPTER_CONFIG_FILE}, r = ${cfg.r}, lora_alpha = ${cfg.lora_alpha}) ` +
      `for ${base}`
    : `a PEFT adapter (${ADAPTER_CONFIG_FILE}, peft_type ${cfg.peft_type}) for ${base}`;
  const hasWeights = await Deno.stat(`${dir}/model.safetensors`).then(() => true, () => false) ||
    await Deno.stat(`${dir}/model.safetensors.index.json`).then(() => true, () => false);
  if (hasWeights) {
    return `${dir}: holds ${what} beside a model: transformers would load ${base} and apply ` +
      `the adapter, and dpzo cannot tell whether model.safetensors is merged; re-export with ` +
      `dpzo export (the merged model, its adapter in ${ADAPTER_SUBDIR}/) or move the adapter ` +
      `files into a subfolder`;
  }
  return `${dir}: is ${what}, not a model; dpzo reads merged models: give the folder that ` +
    `dpzo export --run RUN_DIR --out DIR writes (without --adapter-only), or merge it with PEFT ` +
    `(PeftModel.from_pretrained(base, DIR).merge_and_unload().save_pretrained(OUT))`;
}
