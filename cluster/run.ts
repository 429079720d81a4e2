/**
 * A training run on the embedded default: the coordinator and one pipeline of stage workers in
 * this process, talking through the in-process transport (the same coordinator and worker code
 * that runs over NATS). Writes the run directory:
 *
 *   run.json       config, base checkpoint and its content hash, z spec version, trainable tensors
 *   ledger.jsonl   one durable line per released step (base checkpoint + ledger = the model)
 *   release.json   which of these files may be published (run.json, ledger.jsonl)
 *   metrics.jsonl  per-step and per-evaluation metrics (private diagnostics)
 *   summary.json   epsilon, delta, final metrics, final_weights_sha256 (private fields named)
 *
 * A run resumes (`dpzo train --resume RUN_DIR`, `dpzo coordinate --resume`) from run.json and
 * its ledger: the step counter and the epsilon spent are the ledger's, the workers replay it,
 * and with `insecure_seed` the per-step randomness continues exactly where it was, so the
 * resumed run ends bit-identical to an uninterrupted one (same weights, ledger and epsilon).
 */
import { createHash } from "node:crypto";
import { z } from "zod";
import type { RunConfig } from "../src/dpzo/config.ts";
import { type Checkpoint, openCheckpoint } from "../src/model/checkpoint.ts";
import {
  disposeStage,
  type Stage,
  stageParameters,
  type StageRange,
  wholeModel,
} from "../src/model/opt.ts";
import { loadStage } from "../src/model/load.ts";
import type { OptConfig } from "../src/model/config.ts";
import type { Transport, WorkerStats } from "./transport/transport.ts";
import { attachLora, loraSpecs } from "../src/dpzo/lora.ts";
import { loadTokenizer } from "../src/tokenizer/mod.ts";
import { loadTaskSplits, taskKind } from "../src/tasks/mod.ts";
import { evaluateGeneration } from "../src/eval/generation.ts";
import type { ExampleRequest } from "../src/tasks/task.ts";
import { stepRandomness } from "../src/dpzo/randomness.ts";
import {
  type LedgerEntry,
  type LedgerSink,
  LedgerWriter,
  readLedger,
} from "../src/checkpoint/ledger.ts";
import { type RunConfig as RunConfigT, RunConfigSchema } from "../src/dpzo/config.ts";
import { formatZodError } from "../src/validation.ts";
import { weightsSha256 } from "../src/checkpoint/weights_hash.ts";
import { describeBackend, initBackend } from "../src/tensor/backend.ts";
import { createStageWorker, saveSnapshot, type StageWorker, syncWorker } from "./worker.ts";
import { inProcessTransport } from "./transport/in_process.ts";
import {
  afterRecovery,
  classificationTask,
  type CoordinatorTask,
  type EvalResult,
  generationTask,
  type Schedule,
  train,
} from "./coordinator.ts";
import { RunInterrupted, throwIfStopped } from "./interruption.ts";
import { earlierSegments, perStep, segmentEvent, type SegmentFigures } from "./run_segments.ts";
import {
  checkLedgerPlan,
  planPrivacy,
  type PrivacyPlan,
  resumePrivacyPlan,
} from "./privacy_plan.ts";
import { ledgerGuarantee } from "./privacy_accounting.ts";
import { checkDelta, type TrainingUnits, trainingUnits } from "../src/dpzo/privacy_units.ts";
import {
  metricsHeader,
  PRIVATE_NOTE,
  PRIVATE_SUMMARY_FIELDS,
  RELEASABLE_RUN_FILES,
  releaseWarning,
  writeReleaseManifest,
} from "../src/checkpoint/release.ts";
import { Progress } from "./progress.ts";
import { type HostInfo, hostInfo, RunMonitor, writeReport } from "../src/report/mod.ts";
import { LiveFigures } from "../src/report/live.ts";
import { resolveModelDir, resolveRunInputs } from "../src/hub/mod.ts";

export const Z_SPEC_VERSION = 1;
export const RUN_FORMAT = "dpzo-run/1";

/** What is read back from run.json (the rest of it is for people and the report). */
const RunJsonSchema = z.object({
  config: RunConfigSchema,
  trainable: z.array(z.string()),
}).passthrough();
/** The JetStream store of the nats-server `dpzo launch` starts, inside the run directory. */
export const NATS_STORE_DIR = "nats";

export interface RunSummary {
  format: string;
  /** The summary's private fields (PRIVATE_SUMMARY_FIELDS) and why (src/checkpoint/release.ts). */
  private_diagnostics: { note: string; fields: string[] };
  private: boolean;
  insecure_seed: number | null;
  epsilon: number | null;
  epsilon_error: number | null;
  delta: number | null;
  mechanism: string;
  sigma?: number;
  b?: number;
  accountant: string | null;
  sampling_rate: number;
  steps: number;
  /** Private runs: the grid of the discrete noise, C / grid_units. */
  grid_units?: number;
  /** What the guarantee protects: one training example, or one passage (context). */
  privacy_unit?: "example" | "context";
  /** Example units over passages: the most training examples that share one. */
  largest_passage?: number | null;
  /** Whether an early stop on un-noised training losses was armed (train.stop_on_loss). */
  stop_on_loss?: boolean;
  /** Directions per step (train.directions), when more than one. */
  directions?: number;
  final: {
    val_accuracy: number | null;
    test_accuracy: number | null;
    val_loss: number | null;
    test_loss: number | null;
    /** Generation tasks (SQuAD, DROP): F1 and exact match, 0..1. */
    val_f1?: number | null;
    test_f1?: number | null;
    val_em?: number | null;
    test_em?: number | null;
  };
  train_loss_first: number | null;
  train_loss_last: number | null;
  /** Null for an interrupted run (dpzo export replays its ledger and prints the hash). */
  final_weights_sha256: string | null;
  /** Set when the run stopped on Ctrl-C / SIGTERM after `step` of `of` steps. */
  interrupted?: { step: number; of: number };
  /** Whole run (every segment of a resumed run), over the steps whose traffic was counted. */
  param_sync_bytes_per_step_per_worker: number;
  /** Forward traffic of a training step: batches, activations between stages, scores. */
  activation_bytes_per_step: number;
  /** Set for a sharded run: the layout and each worker's traffic. */
  cluster?: {
    stages: number;
    replicas: number;
    activation_dtype: string;
    workers: WorkerStats[];
  };
  /** Whole run: every segment of a resumed run. */
  wall_s: number;
  backend: string;
  /** The coordinator's machine. */
  host?: HostInfo;
}

/** SHA-256 over the checkpoint's safetensors files (sorted by name): the base's content hash. */
export async function checkpointContentHash(files: string[]): Promise<string> {
  const h = createHash("sha256");
  for (const f of [...files].sort()) {
    const file = await Deno.open(f);
    for await (const chunk of file.readable) h.update(chunk);
  }
  return h.digest("hex");
}

/** The names a stage perturbs: every parameter, or in LoRA mode only the LoRA tensors. */
export function stageTrainable(config: RunConfig, model: OptConfig, range: StageRange): string[] {
  return config.mode.type === "lora"
    ? loraSpecs(model, range, config.mode.rank).map((s) => s.name)
    : stageParameters(model, range).map((s) => s.name);
}

/** Canonical parameter order of the whole model (for final_weights_sha256). */
export function modelOrder(config: RunConfig, model: OptConfig): string[] {
  const whole = wholeModel(model);
  const base = stageParameters(model, whole).map((s) => s.name);
  return config.mode.type === "lora"
    ? [...base, ...loraSpecs(model, whole, config.mode.rank).map((s) => s.name)]
    : base;
}

export interface TaskData {
  train: ExampleRequest[];
  val: ExampleRequest[];
  test: ExampleRequest[];
}

/** Loads the task's splits and turns them into score requests. */
export async function loadTask(config: RunConfig): Promise<TaskData> {
  const tok = await loadTokenizer(config.model);
  const t = config.task;
  const sizes = {
    train: t.train_examples,
    val: t.val_examples,
    test: t.test_examples,
    seed: t.split_seed,
  };
  return await loadTaskSplits(t.name, t.data, sizes, tok, t.max_length);
}

/**
 * The task's loss and evaluation for the coordinator. Generation tasks score F1/EM by greedy
 * generation with `pipeline`, the model in this process; without one (a run over NATS) only
 * their loss is evaluated, and `dpzo eval --run` gives F1/EM afterwards.
 */
export async function coordinatorTask(
  config: RunConfig,
  pipeline?: Stage[],
  log: (line: string) => void = () => {},
): Promise<CoordinatorTask> {
  if (taskKind(config.task.name) === "classification") return classificationTask;
  if (!pipeline) {
    log(`${config.task.name}: F1/EM need the model in this process; run dpzo eval --run after`);
    return generationTask();
  }
  const tok = await loadTokenizer(config.model);
  return generationTask((examples) => evaluateGeneration(pipeline, tok, examples));
}

/** Loads the tensors of one stage (and its LoRA adapters) for a run; returns what it perturbs. */
export async function loadRunStage(
  config: RunConfig,
  ckpt: Checkpoint,
  range: StageRange,
): Promise<{ stage: Stage; trainable: string[] }> {
  const stage = await loadStage(ckpt, range, config.dtype);
  if (config.mode.type === "lora") {
    attachLora(stage, {
      rank: config.mode.rank,
      alpha: config.mode.alpha,
      initSeed: config.mode.init_seed,
    });
  }
  return { stage, trainable: stageTrainable(config, ckpt.config, range) };
}

/** Loads the whole model as one stage (and LoRA when configured). */
export async function loadModel(config: RunConfig): Promise<{ stage: Stage; trainable: string[] }> {
  const ckpt = await openCheckpoint(await resolveModelDir(config.model, { quiet: true }));
  return await loadRunStage(config, ckpt, wholeModel(ckpt.config));
}

export function scheduleOf(config: RunConfig, plan: PrivacyPlan | null): Schedule {
  const q = config.train.batch_size / config.task.train_examples;
  return {
    unit: config.privacy.unit,
    stopOnLoss: config.train.stop_on_loss,
    steps: plan ? plan.steps : config.train.steps,
    lr: config.train.lr,
    phi: config.train.phi,
    weightDecay: config.train.weight_decay,
    directions: config.train.directions,
    q,
    privatization: plan
      ? {
        private: true,
        mechanism: plan.mechanism,
        clip: config.privacy.clip,
        noiseMultiplier: plan.noiseMultiplier,
        gridUnits: plan.gridUnits,
        expectedBatchSize: q * config.task.train_examples,
      }
      : { private: false },
    microBatch: config.cluster.micro_batch,
    evalEvery: config.train.eval_every,
    evalExamples: config.train.eval_examples,
  };
}

async function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  const tmp = `${path}.tmp-${Deno.pid}`;
  await Deno.writeTextFile(tmp, JSON.stringify(value, null, 2) + "\n");
  await Deno.rename(tmp, path);
}

async function prepareRunDir(dir: string): Promise<void> {
  try {
    for await (const e of Deno.readDir(dir)) {
      // `dpzo launch` keeps its nats-server's JetStream store in the run directory.
      if (e.name === NATS_STORE_DIR) continue;
      throw new Error(
        `run_dir: ${dir} already holds a run; choose another run_dir (--set run_dir=...) or remove it`,
      );
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  await Deno.mkdir(dir, { recursive: true });
}

export interface TrainOptions {
  quiet?: boolean;
  /** Fires on Ctrl-C / SIGTERM (cluster/interruption.ts): the run stops at a safe point. */
  interrupt?: AbortSignal;
  /** The command the interrupted line tells to run (default `dpzo train --resume RUN_DIR`). */
  continueWith?: string;
  /** Where the "interrupted at step N" line goes (default stdout). */
  announce?: (line: string) => void;
  log?: (line: string) => void;
  /** The model in this process (in-process transport): generation tasks evaluate with it. */
  pipeline?: Stage[];
}

/** What the coordinator side of a run holds: never any parameters. */
export interface RunContext {
  config: RunConfig;
  model: OptConfig;
  plan: PrivacyPlan | null;
  data: TaskData;
  /** The training set's privacy units (passages for `privacy.unit: context`). */
  units: TrainingUnits;
  schedule: Schedule;
  started: number;
  log: (line: string) => void;
  /** A resumed run (its run directory and run.json exist). */
  resume?: boolean;
}

/**
 * Prepares the coordinator side of a new run: privacy plan, task data, run directory and
 * run.json. Reads only the checkpoint's config and headers, never its weights.
 */
export async function prepareRun(config: RunConfig, opts: TrainOptions = {}): Promise<RunContext> {
  config = await resolveRunInputs(config, { log: opts.log }); // Hub ids -> the local cache
  const log = opts.log ?? ((l: string) => console.error(l));
  const started = performance.now();
  if (config.insecure_seed !== null) {
    log(
      `WARNING: insecure_seed is set: sampling, noise and seeds are reproducible from it. ` +
        `This run is NOT differentially private; use it only for tests and comparisons.`,
    );
  }
  const plan = config.privacy.enabled ? planPrivacy(config, log) : null;
  if (!config.privacy.enabled) {
    log("privacy: disabled (non-private MeZO run): no (epsilon, delta) guarantee");
  }
  const data = await loadTask(config);
  const units = trainingUnits(data.train, config.privacy.unit);
  if (plan) checkDelta(config.privacy.delta, units, config.privacy.allow_large_delta, log);
  const ckpt = await openCheckpoint(config.model);
  const files = [...new Set([...ckpt.tensors.values()].map((l) => l.path))];
  await prepareRunDir(config.run_dir);
  await writeReleaseManifest(config.run_dir, RELEASABLE_RUN_FILES, releaseWarning(config));
  await writeJsonAtomic(`${config.run_dir}/run.json`, {
    format: RUN_FORMAT,
    created: new Date().toISOString(),
    config,
    base_model: { dir: config.model, files, sha256: await checkpointContentHash(files) },
    z_spec_version: Z_SPEC_VERSION,
    trainable: modelOrder(config, ckpt.config).filter((n) =>
      config.mode.type === "lora" ? n.includes(".lora_") : true
    ),
    privacy_plan: plan,
  });
  return {
    config,
    model: ckpt.config,
    plan,
    data,
    units,
    schedule: scheduleOf(config, plan),
    started,
    log,
  };
}

/** run.json of an existing run directory: its config and the tensors it perturbs. */
export async function readRunJson(
  runDir: string,
): Promise<{ config: RunConfigT; trainable: string[]; privacyPlan?: unknown }> {
  const path = `${runDir}/run.json`;
  let raw: unknown;
  try {
    raw = JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    throw new Error(
      `${path}: ${
        e instanceof Deno.errors.NotFound ? "not found: is this a run directory?" : "not valid JSON"
      }`,
    );
  }
  const parsed = RunJsonSchema.safeParse(raw);
  if (!parsed.success) throw new Error(`${path}: ${formatZodError(parsed.error)}`);
  return {
    config: { ...parsed.data.config, run_dir: runDir },
    trainable: parsed.data.trainable,
    privacyPlan: parsed.data.privacy_plan,
  };
}

/** The config of an existing run directory (run.json), for `--resume`. */
export async function readRunConfig(runDir: string): Promise<RunConfigT> {
  return (await readRunJson(runDir)).config;
}

/**
 * The coordinator side of a run to resume: run.json's config, the same privacy plan, task data
 * and schedule; nothing in the run directory is changed.
 */
export async function resumeRunContext(
  runDir: string,
  opts: TrainOptions = {},
): Promise<RunContext> {
  const log = opts.log ?? ((l: string) => console.error(l));
  const { config, privacyPlan } = await readRunJson(runDir);
  const started = performance.now();
  // The plan run.json recorded, never recalibrated; a config that changed it is refused.
  const plan = config.privacy.enabled
    ? resumePrivacyPlan(config, privacyPlan, `${runDir}/run.json`)
    : null;
  const data = await loadTask(config);
  const units = trainingUnits(data.train, config.privacy.unit);
  const ckpt = await openCheckpoint(config.model);
  log(`resume: ${runDir}`);
  return {
    config,
    model: ckpt.config,
    plan,
    data,
    units,
    schedule: scheduleOf(config, plan),
    started,
    log,
    resume: true,
  };
}

/** Per-step training losses already in metrics.jsonl (a resumed run's summary covers them). */
async function previousLosses(path: string): Promise<number[]> {
  let text = "";
  try {
    text = await Deno.readTextFile(path);
  } catch { /* none */ }
  const out: number[] = [];
  for (const line of text.split("\n")) {
    try {
      const m = JSON.parse(line);
      if (typeof m.step === "number" && m.event === undefined) {
        const loss = (m.loss_plus + m.loss_minus) / 2;
        if (Number.isFinite(loss)) out[m.step - 1] = loss;
      }
    } catch { /* a partial last line */ }
  }
  return out.filter((v) => v !== undefined);
}

/** Runs the training loop over a transport, evaluates, and writes summary.json. */
export async function coordinateRun(
  ctx: RunContext,
  transport: Transport,
  opts: TrainOptions & {
    /** The ledger to append to and its entries so far (default: ledger.jsonl of the run). */
    ledger?: { sink: LedgerSink; entries: LedgerEntry[] };
  } = {},
): Promise<RunSummary> {
  const { config, plan, data, schedule, log } = ctx;
  const runDir = config.run_dir;
  const padId = ctx.model.padTokenId;
  const ledgerPath = `${runDir}/ledger.jsonl`;
  const { sink: ledger, entries } = opts.ledger ?? {
    entries: ctx.resume
      ? await readLedger(ledgerPath).catch((e) => {
        if (/ledger not found/.test(e.message)) return [];
        throw e;
      })
      : [],
    sink: await LedgerWriter.open(ledgerPath),
  };
  // The ledger's steps were run with this plan (q, noise, grid, clip, unit), else refused.
  if (plan) checkLedgerPlan(entries, plan, config.privacy.clip, ledgerPath);
  const losses: number[] = ctx.resume
    ? (await previousLosses(`${runDir}/metrics.jsonl`)).slice(0, entries.length)
    : [];
  const metricsFile = await Deno.open(`${runDir}/metrics.jsonl`, { append: true, create: true });
  const writeMetric = async (m: unknown) => {
    await metricsFile.write(new TextEncoder().encode(JSON.stringify(m) + "\n"));
  };
  if ((await metricsFile.stat()).size === 0) await writeMetric(metricsHeader());
  log(`private diagnostics: the progress lines, warnings and metrics below are ${PRIVATE_NOTE}`);
  if (ctx.resume) {
    log(`resume: the ledger holds ${entries.length} of ${schedule.steps} steps`);
    await writeMetric({ event: "resumed", step: entries.length });
  }
  const rng = stepRandomness(config.insecure_seed);
  const progress = new Progress(schedule.steps, { quiet: opts.quiet, log });
  const monitor = new RunMonitor({
    private: plan !== null,
    clip: config.privacy.clip,
    lr: config.train.lr,
    steps: schedule.steps,
    stopOnLoss: config.train.stop_on_loss,
  });
  const live = new LiveFigures({ private: plan !== null });
  let lastEps: { epsilon: number; error: number } | null = null;
  const epsEvery = Math.max(config.train.log_every, Math.ceil(schedule.steps / 100));
  const task = await coordinatorTask(config, opts.pipeline, log);
  const host = hostInfo(); // ~1 s: started now, not when a Ctrl-C waits for the summary
  // Whole-run figures: this segment's, plus those of the segments before a resume.
  const firstStep = entries.length;
  const earlier = ctx.resume
    ? earlierSegments(await Deno.readTextFile(`${runDir}/metrics.jsonl`), firstStep)
    : earlierSegments("", 0);
  // Workers that re-joined a resumed coordinator count from their own start: take the difference.
  const before = {
    sync: transport.paramSyncBytes(),
    activations: await withinSeconds(transport.activationBytes(), 30).catch(() => 0),
  };
  const segment = async () =>
    segmentEvent(firstStep, entries.length, {
      wall_s: (performance.now() - ctx.started) / 1000,
      param_sync_bytes: transport.paramSyncBytes() - before.sync,
      // Over NATS this asks the workers, which the same Ctrl-C may have stopped.
      activation_bytes: Math.max(
        0,
        await withinSeconds(transport.activationBytes(), 5).then(
          (b) => b - before.activations,
          () => 0,
        ),
      ),
    });
  let val: EvalResult | null = null, test: EvalResult | null = null;
  try {
    await train({
      task,
      transport,
      schedule,
      train: data.train,
      val: data.val,
      padId,
      rng,
      ledger,
      entries,
      units: ctx.units.groups,
      log,
      stop: opts.interrupt,
      hooks: {
        onStep: async (m) => {
          const loss = (m.loss_plus + m.loss_minus) / 2;
          if (Number.isFinite(loss)) losses.push(loss);
          // An accountant evaluation costs ~0.1 s: at most ~100 per run, not one per log line
          // (75000 steps logged every 10 would spend far more time accounting than training).
          // Epsilon counts the ledger's entries, with the settings each one records.
          const epsNow = m.step % epsEvery === 0 || m.step === schedule.steps;
          if (plan && epsNow) {
            lastEps = ledgerGuarantee(entries, plan.delta, plan.accountant, { bounds: false });
          }
          await writeMetric({
            ...m,
            ...(lastEps && epsNow ? { epsilon: lastEps.epsilon } : {}),
          });
          live.step(m, lastEps?.epsilon);
          progress.update(m.step, live.figures());
          // Warnings a user can act on; a loss blow-up throws (the run stops, message names lr).
          for (const w of monitor.observe(m)) {
            await writeMetric({ event: "warning", ...w });
            progress.note(w.message);
          }
        },
        onEval: async (m) => {
          await writeMetric({ event: "eval", ...m });
          live.eval(m.accuracy);
          progress.note(
            m.f1 !== undefined
              ? `step ${m.step}: ${m.split} F1 ${(m.f1 * 100).toFixed(1)}%`
              : `step ${m.step}: ${m.split} accuracy ${(m.accuracy * 100).toFixed(1)}%`,
          );
        },
      },
    });
    progress.done();
    const evalOpts = { step: schedule.steps, padId, microBatch: schedule.microBatch };
    throwIfStopped(opts.interrupt, entries.length, schedule.steps);
    // A worker lost meanwhile: recovered, then evaluated again (nothing is released here).
    const again = <T>(f: () => Promise<T>, what: string) =>
      afterRecovery(transport, entries, f, what, log);
    val = await again(() => task.evaluate(transport, data.val, evalOpts), "final evaluation");
    throwIfStopped(opts.interrupt, entries.length, schedule.steps);
    test = await again(() => task.evaluate(transport, data.test, evalOpts), "test evaluation");
  } catch (e) {
    // Record why the run stopped and still write the report: the curves show what went wrong.
    progress.done();
    const mine = await segment();
    await writeMetric(mine).catch(() => {});
    if (e instanceof RunInterrupted) {
      await writeMetric({ event: "interrupted", step: entries.length, steps: schedule.steps });
    } else {
      await writeMetric({ event: "stopped", message: e instanceof Error ? e.message : String(e) });
    }
    metricsFile.close();
    if (!(e instanceof RunInterrupted)) {
      await writeReport(runDir).catch(() => {});
      throw e;
    }
    const summary = await summaryOf(null, null, mine, true);
    await writeJsonAtomic(`${runDir}/summary.json`, summary);
    const stopped = new RunInterrupted(
      entries.length,
      schedule.steps,
      summary.epsilon,
      opts.continueWith ?? `dpzo train --resume ${runDir}`,
    );
    // The line first (a user waits for it), then the report.
    (opts.announce ?? ((l: string) => console.log(l)))(stopped.message);
    stopped.announced = true;
    await writeReport(runDir).catch((err) => log(`WARNING: report not written (${err})`));
    throw stopped;
  } finally {
    ledger.close();
    progress.done();
  }
  const n = (v: number) => (Number.isNaN(v) ? null : v);
  await writeMetric({
    event: "eval",
    step: schedule.steps,
    split: "val",
    ...val,
    examples: data.val.length,
  });
  await writeMetric({
    event: "eval",
    step: schedule.steps,
    split: "test",
    ...test,
    examples: data.test.length,
  });
  const mine = await segment();
  await writeMetric(mine);
  metricsFile.close();
  const summary = await summaryOf(val, test, mine);
  await writeJsonAtomic(`${runDir}/summary.json`, summary);
  try {
    log(`report: ${await writeReport(runDir)}`);
  } catch (e) {
    log(`WARNING: report not written (${e}); run dpzo report --run ${runDir}`);
  }
  return summary;

  /**
   * The summary of the whole run (every segment): final figures, or for an interrupted run
   * (`stopped`) the steps released so far, no final evaluation and no weights hash (the
   * weights of a dropped step are not the ledger's; dpzo export gives the model and its hash).
   */
  async function summaryOf(
    val: EvalResult | null,
    test: EvalResult | null,
    mine: SegmentFigures,
    stopped = false,
  ): Promise<RunSummary> {
    // Every step counted is a ledger entry (what was released), interrupted or not.
    const steps = entries.length;
    const stats = transport.workerStats?.bind(transport);
    const workers = stopped || !stats
      ? undefined
      : await afterRecovery(transport, entries, stats, "worker statistics", log);
    const eps = plan
      ? (steps ? ledgerGuarantee(entries, plan.delta, plan.accountant) : { epsilon: 0, error: 0 })
      : null;
    const window = Math.min(100, Math.floor(losses.length / 2) || 1);
    const avg = (a: number[]) => (a.length ? a.reduce((x, y) => x + y, 0) / a.length : null);
    const counted = earlier.steps + mine.steps;
    return {
      format: RUN_FORMAT,
      private_diagnostics: { note: PRIVATE_NOTE, fields: PRIVATE_SUMMARY_FIELDS },
      private: plan !== null && config.insecure_seed === null,
      insecure_seed: config.insecure_seed,
      ...(stopped ? { interrupted: { step: steps, of: schedule.steps } } : {}),
      epsilon: eps ? eps.epsilon : null,
      epsilon_error: eps ? eps.error : null,
      delta: plan ? config.privacy.delta : null,
      mechanism: plan ? plan.mechanism : "none",
      ...(plan?.mechanism === "gaussian" ? { sigma: plan.noiseMultiplier } : {}),
      ...(plan?.mechanism === "laplace" ? { b: plan.noiseMultiplier } : {}),
      accountant: plan ? plan.accountant : null,
      sampling_rate: schedule.q,
      steps,
      ...(plan
        ? {
          grid_units: plan.gridUnits,
          privacy_unit: plan.unit,
          largest_passage: ctx.units.largestPassage,
          stop_on_loss: config.train.stop_on_loss,
        }
        : {}),
      ...(config.train.directions > 1 ? { directions: config.train.directions } : {}),
      final: {
        val_accuracy: val ? n(val.accuracy) : null,
        test_accuracy: test ? n(test.accuracy) : null,
        val_loss: val ? n(val.loss) : null,
        test_loss: test ? n(test.loss) : null,
        ...(val?.f1 !== undefined && test?.f1 !== undefined
          ? { val_f1: n(val.f1), test_f1: n(test.f1), val_em: n(val.em!), test_em: n(test.em!) }
          : {}),
      },
      train_loss_first: avg(losses.slice(0, window)),
      train_loss_last: avg(losses.slice(-window)),
      final_weights_sha256: stopped ? null : weightsSha256(
        modelOrder(config, ctx.model),
        await afterRecovery(transport, entries, () => transport.digests(), "weights hash", log),
      ),
      param_sync_bytes_per_step_per_worker: perStep(
        earlier.param_sync_bytes + mine.param_sync_bytes,
        counted,
      ),
      activation_bytes_per_step: perStep(earlier.activation_bytes + mine.activation_bytes, counted),
      ...(workers
        ? {
          cluster: {
            stages: Math.max(...workers.map((w) => w.stage)) + 1,
            replicas: transport.groups,
            activation_dtype: config.cluster.activation_dtype,
            workers,
          },
        }
        : {}),
      wall_s: earlier.wall_s + mine.wall_s,
      backend: config.backend,
      host: await host,
    };
  }
}

/** `p`, or a rejection after `s` seconds. */
function withinSeconds<T>(p: Promise<T>, s: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${s} s`)), s * 1000);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

/**
 * `dpzo train --resume RUN_DIR` on the embedded default: loads the base model, replays the
 * ledger onto it (the same passes as the live run), and continues after its last step.
 */
export async function resumeEmbedded(
  runDir: string,
  opts: TrainOptions = {},
): Promise<RunSummary> {
  const log = opts.log ?? ((l: string) => console.error(l));
  const config = await readRunConfig(runDir);
  await initBackend(config.backend);
  log(describeBackend());
  const ctx = await resumeRunContext(runDir, { ...opts, log });
  const ledgerPath = `${runDir}/ledger.jsonl`;
  const entries = await readLedger(ledgerPath).catch((e) => {
    if (/ledger not found/.test(e.message)) return [] as LedgerEntry[];
    throw e;
  });
  const fresh = async (): Promise<StageWorker> => {
    const { stage, trainable } = await loadModel(config);
    return createStageWorker(stage, trainable);
  };
  const t0 = performance.now();
  const worker = await syncWorker(
    await fresh(),
    entries.length,
    (s) => Promise.resolve(entries[s - 1]),
    fresh,
  );
  log(
    `resume: replayed ${entries.length} steps in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
  const pipeline = [[worker]];
  const transport = inProcessTransport(pipeline, {
    rebuild: async () => {
      disposeStage(pipeline[0][0].stage);
      return await fresh();
    },
    afterUpdate: snapshotHook(config),
  });
  try {
    return await coordinateRun(ctx, transport, {
      ...opts,
      pipeline: [worker.stage],
      ledger: { sink: await LedgerWriter.open(ledgerPath), entries },
    });
  } finally {
    await transport.close();
  }
}

/** Snapshots every `train.snapshot_every` steps (the whole model is stage 0 when embedded). */
function snapshotHook(config: RunConfig) {
  const every = config.train.snapshot_every;
  if (!every) return undefined;
  return async (g: number, k: number, w: StageWorker) => {
    if (g === 0 && w.appliedStep % every === 0) await saveSnapshot(w, config.run_dir, k);
  };
}

/** Runs `dpzo train` on the embedded default and returns the summary it wrote. */
export async function trainEmbedded(
  config: RunConfig,
  opts: TrainOptions = {},
): Promise<RunSummary> {
  const log = opts.log ?? ((l: string) => console.error(l));
  config = await resolveRunInputs(config, { log }); // Hub ids -> the cache (downloads once)
  await initBackend(config.backend);
  log(describeBackend());
  const ctx = await prepareRun(config, { ...opts, log });
  const { stage, trainable } = await loadModel(config);
  const transport = inProcessTransport([[createStageWorker(stage, trainable)]], {
    afterUpdate: snapshotHook(config),
  });
  try {
    return await coordinateRun(ctx, transport, { ...opts, pipeline: [stage] });
  } finally {
    await transport.close();
  }
}
