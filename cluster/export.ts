/**
 * `dpzo export`: replays a run's ledger onto its base checkpoint — the same in-place passes, in
 * the same order, with the same coefficients as the live run, so the result is bit-identical —
 * and writes a Hugging Face checkpoint directory. `model.safetensors` is the fine-tuned model:
 * for LoRA runs the merged weights W + (alpha/r) B A on q_proj/v_proj (PEFT's
 * `merge_and_unload`), with PEFT's adapter files in `adapter/` (src/model/peft.ts says why not
 * beside it); `--adapter-only` writes the adapter alone.
 *
 * It writes only releasable files (src/checkpoint/release.ts): the model, the tokenizer and
 * config of the base checkpoint, the ledger (base + ledger = the model), `SHA256SUMS` and
 * `release.json` listing them. Nothing measured on the training data (metrics, summary,
 * report) is copied.
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
import {
  applyEntryPasses,
  createStageWorker,
  floatValues,
  setValues,
  stageDigests,
  type StageWorker,
} from "./worker.ts";
import { narrowNearest } from "../src/model/half.ts";
import type { DType } from "../src/model/safetensors.ts";
import { loadModel, modelOrder, readRunJson } from "./run.ts";
import { readSnapshot, snapshotSteps } from "../src/checkpoint/snapshot.ts";
import { createHash } from "node:crypto";
import { LORA_TARGETS } from "../src/dpzo/lora.ts";
import {
  ADAPTER_CONFIG_FILE,
  ADAPTER_SUBDIR,
  ADAPTER_WEIGHTS_FILE,
  adapterConfig,
  adapterKey,
  mergeLora,
} from "../src/model/peft.ts";
import { snapshotModel } from "../src/hub/cache.ts";
import { UsageError } from "../src/validation.ts";

export interface ExportResult {
  steps: number;
  /**
   * The replayed model's weights hash (src/checkpoint/weights_hash.ts): the run's trained
   * tensors, for LoRA the base weights and the adapter's A and B before merging.
   */
  final_weights_sha256: string;
  /** The same hash from the run's summary.json (null when the run did not finish). */
  run_final_weights_sha256: string | null;
  /** The files written, relative to the output folder, and their SHA-256 (as in SHA256SUMS). */
  files: { file: string; sha256: string }[];
  /** model.safetensors holds merged LoRA weights. */
  merged: boolean;
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
      setValues(w.stage, name, data.get(name)!, `snapshot step ${step}`);
    }
    w.appliedStep = step;
    log(`starting from the snapshot of step ${step}`);
    return step;
  }
  return 0;
}

export interface ExportOptions {
  /** LoRA runs: write only the PEFT adapter (adapter_config.json, adapter_model.safetensors). */
  adapterOnly?: boolean;
}

/**
 * Writes a run's fine-tuned model to `outDir` as a Hugging Face checkpoint: `model.safetensors`
 * (for LoRA, the merged weights W + (alpha/r) B A), config and tokenizer files, and for LoRA the
 * PEFT adapter in `outDir/adapter/` (with `adapterOnly`, the adapter alone in `outDir`). Every
 * file is written to a temporary name and renamed; `SHA256SUMS` lists their hashes.
 */
export async function exportRun(
  runDir: string,
  outDir: string,
  log: (l: string) => void = (l) => console.error(l),
  opts: ExportOptions = {},
): Promise<ExportResult> {
  const run = await readRunJson(runDir);
  const lora = run.config.mode.type === "lora" ? run.config.mode : null;
  if (opts.adapterOnly && !lora) {
    throw new UsageError(
      `--adapter-only: ${runDir} is a full-parameter run (mode: full); it has no adapter; ` +
        `drop --adapter-only`,
    );
  }
  const { config, worker, steps, entries } = await replayRun(runDir, log);
  const { stage } = worker;
  const sha = weightsSha256(modelOrder(config, stage.config), stageDigests(worker));
  // Float32 values of a tensor (half-stored ones widened, exactly), and a tensor as stored:
  // half-precision runs export their half weights, exactly what they trained.
  const data = (name: string) => floatValues(stage.weights.get(name)!, stage);
  const halfDtype: DType = stage.dtype === "bfloat16" ? "BF16" : "F16";
  const stored = (name: string) => {
    const t = stage.weights.get(name)!;
    return t instanceof Float32Array ? { data: t } : { data: t, dtype: halfDtype };
  };
  /** Float32 values to the stage's dtype (a merged LoRA weight of a half-precision base). */
  const asStored = (values: Float32Array) => {
    if (stage.dtype === "float32") return { data: values };
    const bits = new Uint16Array(values.length);
    narrowNearest(values, stage.dtype, bits);
    return { data: bits, dtype: halfDtype };
  };
  const isLora = (n: string) => n.includes(".lora_");

  await Deno.mkdir(outDir, { recursive: true });
  const files: string[] = [];
  if (opts.adapterOnly && await exists(`${outDir}/model.safetensors`)) {
    throw new UsageError(
      `--out: ${outDir} holds a model.safetensors; write the adapter to its own folder`,
    );
  }
  if (!opts.adapterOnly) {
    // Adapter files beside a model make transformers load the base instead (src/model/peft.ts).
    for (const f of [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE]) {
      if (await exists(`${outDir}/${f}`)) {
        await Deno.remove(`${outDir}/${f}`);
        log(`removed ${outDir}/${f} of an earlier export (the adapter goes to ${ADAPTER_SUBDIR}/)`);
      }
    }
    const tensors = stage.specs.filter((s) => !isLora(s.name)).map((spec) => {
      const adapted = lora && stage.lora?.adapted.has(spec.name.replace(/\.weight$/, ""));
      if (!adapted) return { name: spec.name, shape: spec.shape, ...stored(spec.name) };
      const base = spec.name.replace(/\.weight$/, "");
      const [out, inDim] = spec.shape;
      return {
        name: spec.name,
        shape: spec.shape,
        ...asStored(mergeLora(
          data(spec.name),
          data(`${base}.lora_A.weight`),
          data(`${base}.lora_B.weight`),
          { out, in: inDim, rank: lora.rank },
          lora.alpha / lora.rank,
        )),
      };
    });
    await writeSafetensors(`${outDir}/model.safetensors`, tensors);
    files.push("model.safetensors");
    for (const f of TOKENIZER_FILES) {
      try {
        await copyAtomic(`${config.model}/${f}`, `${outDir}/${f}`);
        files.push(f);
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e; // an optional file
      }
    }
    // config.json says how the weights are stored, as Hugging Face's torch_dtype.
    const hfConfig = JSON.parse(await Deno.readTextFile(`${outDir}/config.json`));
    if (hfConfig.torch_dtype !== stage.dtype) {
      hfConfig.torch_dtype = stage.dtype;
      await writeTextAtomic(`${outDir}/config.json`, JSON.stringify(hfConfig, null, 2) + "\n");
    }
  }
  if (lora) {
    const sub = opts.adapterOnly ? "" : `${ADAPTER_SUBDIR}/`;
    await Deno.mkdir(`${outDir}/${sub || "."}`, { recursive: true });
    await writeSafetensors(
      `${outDir}/${sub}${ADAPTER_WEIGHTS_FILE}`,
      stage.specs.filter((s) => isLora(s.name)).map((spec) => ({
        name: adapterKey(spec.name),
        shape: spec.shape,
        data: data(spec.name),
      })),
    );
    const hub = snapshotModel(await Deno.realPath(config.model));
    await writeTextAtomic(
      `${outDir}/${sub}${ADAPTER_CONFIG_FILE}`,
      JSON.stringify(
        adapterConfig({
          rank: lora.rank,
          alpha: lora.alpha,
          targets: LORA_TARGETS,
          base: hub?.id ?? await Deno.realPath(config.model),
          revision: hub?.commit,
        }),
        null,
        2,
      ) + "\n",
    );
    files.push(`${sub}${ADAPTER_WEIGHTS_FILE}`, `${sub}${ADAPTER_CONFIG_FILE}`);
  }
  // The ledger (released values only) and the list of what may be published.
  const legacy = await writeReleasedLedger(outDir, entries);
  if (legacy) log(`WARNING: ${legacy}`);
  files.push("ledger.jsonl");
  const sums: { file: string; sha256: string }[] = [];
  for (const f of files) sums.push({ file: f, sha256: await fileSha256(`${outDir}/${f}`) });
  await writeTextAtomic(
    `${outDir}/${CHECKSUMS_FILE}`,
    sums.map((s) => `${s.sha256}  ${s.file}\n`).join(""),
  );
  const warning = [releaseWarning(config), legacy].filter((w) => w).join("; ");
  await writeReleaseManifest(
    outDir,
    [...files, CHECKSUMS_FILE, "release.json"],
    warning || undefined,
  );
  return {
    steps,
    final_weights_sha256: sha,
    run_final_weights_sha256: await summaryHash(runDir),
    files: sums,
    merged: lora !== null && !opts.adapterOnly,
  };
}

/** The `sha256sum -c` file an export writes beside its files. */
export const CHECKSUMS_FILE = "SHA256SUMS";

const exists = (path: string) => Deno.stat(path).then(() => true, () => false);

async function fileSha256(path: string): Promise<string> {
  const h = createHash("sha256");
  const file = await Deno.open(path);
  for await (const chunk of file.readable) h.update(chunk);
  return h.digest("hex");
}

/** final_weights_sha256 of the run's summary.json, when the run finished. */
async function summaryHash(runDir: string): Promise<string | null> {
  try {
    const s = JSON.parse(await Deno.readTextFile(`${runDir}/summary.json`));
    return typeof s.final_weights_sha256 === "string" ? s.final_weights_sha256 : null;
  } catch {
    return null;
  }
}

async function writeTextAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp-${Deno.pid}`;
  await Deno.writeTextFile(tmp, text);
  await Deno.rename(tmp, path);
}

async function copyAtomic(from: string, to: string): Promise<void> {
  const tmp = `${to}.tmp-${Deno.pid}`;
  await Deno.copyFile(from, tmp);
  await Deno.chmod(tmp, 0o644).catch(() => {}); // the base's files may be read-only
  await Deno.rename(tmp, to);
}
