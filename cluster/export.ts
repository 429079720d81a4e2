/**
 * `dpzo export`: replays a run's ledger onto its base checkpoint — the same in-place passes, in
 * the same order, with the same coefficients as the live run, so the result is bit-identical —
 * and writes a Hugging Face checkpoint directory. Full-parameter runs give `model.safetensors`;
 * LoRA runs give the base `model.safetensors` plus PEFT's `adapter_model.safetensors` and
 * `adapter_config.json`.
 *
 * It writes only releasable files (src/checkpoint/release.ts): the model, the tokenizer and
 * config of the base checkpoint, the ledger (base + ledger = the model), and `release.json`
 * listing them. Nothing measured on the training data (metrics, summary, report) is copied.
 */
import type { RunConfig } from "../src/dpzo/config.ts";
import { type LedgerEntry, readLedger } from "../src/checkpoint/ledger.ts";
import {
  releaseWarning,
  writeReleasedLedger,
  writeReleaseManifest,
} from "../src/checkpoint/release.ts";
import { writeSafetensors } from "../src/model/safetensors.ts";
import { weightsSha256 } from "../src/checkpoint/weights_hash.ts";
import { initBackend } from "../src/tensor/backend.ts";
import { applyEntryPasses, createStageWorker, stageDigests, type StageWorker } from "./worker.ts";
import { loadModel, modelOrder, readRunJson } from "./run.ts";
import { readSnapshot, snapshotSteps } from "../src/checkpoint/snapshot.ts";
import { weightView } from "../src/tensor/backend.ts";

export interface ExportResult {
  steps: number;
  final_weights_sha256: string;
  files: string[];
}

const TOKENIZER_FILES = [
  "config.json",
  "generation_config.json",
  "vocab.json",
  "merges.txt",
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
];

/**
 * Loads a run's base model and replays its ledger onto it (the backend of the run's config is
 * started): the fine-tuned model as one stage, and the worker that holds it.
 */
export async function replayRun(
  runDir: string,
  log: (l: string) => void = (l) => console.error(l),
): Promise<{ config: RunConfig; worker: StageWorker; steps: number; entries: LedgerEntry[] }> {
  const runPath = `${runDir}/run.json`;
  const run = await readRunJson(runDir);
  const { config } = run;
  const entries = await readLedger(`${runDir}/ledger.jsonl`);
  await initBackend(config.backend);
  const { stage, trainable } = await loadModel(config);
  if (trainable.join() !== run.trainable.join()) {
    throw new Error(
      `${runPath}: the trainable tensors differ from the base checkpoint's; wrong model?`,
    );
  }
  const worker = createStageWorker(stage, trainable);
  const from = await fromSnapshots(runDir, worker, entries.length, log);
  const t0 = performance.now();
  for (const e of entries.slice(from)) {
    applyEntryPasses(worker, e);
    if (e.step % 100 === 0) log(`replayed ${e.step}/${entries.length} steps`);
  }
  log(
    `replayed ${entries.length - from} steps${from ? ` after the snapshot of step ${from}` : ""} ` +
      `in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
  return { config, worker, steps: entries.length, entries };
}

/**
 * Moves the whole model to the newest snapshot step (<= maxStep) whose stage files together hold
 * every trainable tensor (any stage layout); returns that step, or 0 without one. A truncated
 * or corrupt snapshot is an error naming its file.
 */
async function fromSnapshots(
  runDir: string,
  w: StageWorker,
  maxStep: number,
  log: (l: string) => void,
): Promise<number> {
  const steps = new Set<number>();
  for (let k = 0; k < 64; k++) for (const s of await snapshotSteps(runDir, k)) steps.add(s);
  for (const step of [...steps].sort((a, b) => b - a)) {
    if (step > maxStep) continue;
    const data = new Map<string, Float32Array>();
    for (let k = 0; k < 64; k++) {
      if (!(await snapshotSteps(runDir, k)).includes(step)) continue;
      for (const [name, d] of await readSnapshot(runDir, step, k)) data.set(name, d);
    }
    if (!w.trainable.every((n) => data.has(n))) continue; // not every stage wrote this step
    for (const name of w.trainable) {
      const view = weightView(w.stage.params.get(name)!);
      const d = data.get(name)!;
      if (d.length !== view.length) {
        throw new Error(`snapshot step ${step}: ${name} has another size`);
      }
      view.set(d);
    }
    w.appliedStep = step;
    log(`starting from the snapshot of step ${step}`);
    return step;
  }
  return 0;
}

export async function exportRun(
  runDir: string,
  outDir: string,
  log: (l: string) => void = (l) => console.error(l),
): Promise<ExportResult> {
  const { config, worker, steps, entries } = await replayRun(runDir, log);
  const { stage } = worker;
  const sha = weightsSha256(modelOrder(config, stage.config), stageDigests(worker));

  await Deno.mkdir(outDir, { recursive: true });
  const tensors = stage.specs.map((spec) => ({
    name: spec.name,
    shape: spec.shape,
    data: stage.params.get(spec.name)!.dataSync() as Float32Array,
  }));
  const isLora = (n: string) => n.includes(".lora_");
  const files: string[] = [];
  await writeSafetensors(`${outDir}/model.safetensors`, tensors.filter((t) => !isLora(t.name)));
  files.push("model.safetensors");
  if (config.mode.type === "lora") {
    await writeSafetensors(
      `${outDir}/adapter_model.safetensors`,
      tensors.filter((t) => isLora(t.name)).map((t) => ({
        ...t,
        name: `base_model.model.${t.name}`,
      })),
    );
    await Deno.writeTextFile(
      `${outDir}/adapter_config.json`,
      JSON.stringify(
        {
          peft_type: "LORA",
          task_type: "CAUSAL_LM",
          r: config.mode.rank,
          lora_alpha: config.mode.alpha,
          lora_dropout: 0,
          target_modules: ["q_proj", "v_proj"],
          bias: "none",
          base_model_name_or_path: config.model,
        },
        null,
        2,
      ) + "\n",
    );
    files.push("adapter_model.safetensors", "adapter_config.json");
  }
  for (const f of TOKENIZER_FILES) {
    try {
      await Deno.copyFile(`${config.model}/${f}`, `${outDir}/${f}`);
      files.push(f);
    } catch { /* optional file */ }
  }
  const legacy = await writeReleasedLedger(outDir, entries);
  if (legacy) log(`WARNING: ${legacy}`);
  files.push("ledger.jsonl", "release.json");
  const warning = [releaseWarning(config), legacy].filter((w) => w).join("; ");
  await writeReleaseManifest(outDir, files, warning || undefined);
  return { steps, final_weights_sha256: sha, files };
}
