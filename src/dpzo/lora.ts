/**
 * LoRA (Hu et al. 2021) on the attention's q_proj and v_proj, as the DP-ZO paper's main setting
 * uses it: `W x + (alpha / r) B A x` with A [r, in] drawn from a seeded generator and B [out, r]
 * zero, so training starts at the base model. Only the LoRA tensors are perturbed.
 *
 * Names follow PEFT without its `base_model.model.` prefix:
 * `model.decoder.layers.L.self_attn.q_proj.lora_A.weight`.
 *
 * Initialisation of A: element i of A is `z(init_seed, name, i) / sqrt(3 * in)`, where z is the
 * perturbation generator of `src/rng/z.ts` — a normal with the variance of PEFT's
 * kaiming_uniform(a = sqrt 5) (bound 1 / sqrt(in), variance 1 / (3 in)), reproducible anywhere.
 */
import { fillZ } from "../rng/z.ts";
import type { ParamSpec, Stage, StageRange } from "../model/opt.ts";
import { float32Array } from "../model/weights.ts";
import type { OptConfig } from "../model/config.ts";

export interface LoraOptions {
  rank: number;
  alpha: number;
  initSeed: number;
}

export const LORA_TARGETS = ["q_proj", "v_proj"] as const;

/** The LoRA parameters of the stage's layers, in canonical order (layer, q then v, A then B). */
export function loraSpecs(
  config: OptConfig,
  range: StageRange,
  rank: number,
): ParamSpec[] {
  const D = config.hiddenSize;
  const specs: ParamSpec[] = [];
  for (let l = range.firstLayer; l < range.endLayer; l++) {
    for (const t of LORA_TARGETS) {
      const base = `model.decoder.layers.${l}.self_attn.${t}`;
      specs.push({ name: `${base}.lora_A.weight`, shape: [rank, D], kind: "weight" });
      specs.push({ name: `${base}.lora_B.weight`, shape: [D, rank], kind: "weight" });
    }
  }
  return specs;
}

/** Adds freshly initialised LoRA tensors (float32, whatever the stage's dtype) to a stage. */
export function attachLora(stage: Stage, opts: LoraOptions): ParamSpec[] {
  const specs = loraSpecs(stage.config, stage.range, opts.rank);
  const adapted = new Set<string>();
  for (const spec of specs) {
    const n = spec.shape[0] * spec.shape[1];
    const data = float32Array(n);
    if (spec.name.includes("lora_A")) {
      fillZ(data, BigInt(opts.initSeed), spec.name, 0);
      const s = 1 / Math.sqrt(3 * spec.shape[1]);
      for (let i = 0; i < n; i++) data[i] = Math.fround(data[i] * s);
    }
    stage.weights.set(spec.name, data);
    adapted.add(spec.name.replace(/\.lora_[AB]\.weight$/, ""));
  }
  stage.lora = { scale: opts.alpha / opts.rank, adapted };
  stage.specs = [...stage.specs, ...specs];
  return specs;
}
