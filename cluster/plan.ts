/**
 * Planning a run from the model's `config.json` alone (no weights read): the stage split over
 * N nodes of G GiB, the memory of every worker by part (src/model/memory.ts), the activation
 * and parameter traffic of a step, and, with a measurement of this machine, the step time
 * (./step_time.ts). `dpzo plan` prints it; `dpzo launch` (and `dpzo train`) use the same
 * arithmetic to refuse a split that cannot fit this machine before starting anything.
 *
 * The plan takes the fewest stages K whose largest worker fits a node (after HEADROOM), and
 * R = floor(N / K) replica groups unless told otherwise: fewer stages mean fewer activations on
 * the wire and a shorter pipeline; more groups split each batch.
 */
import { planStages } from "./stage_plan.ts";
import { encodeControl, hasRunKey, useRunKey } from "./protocol.ts";
import { estimateStepTime, type MachineSpeed, type StepTimeEstimate } from "./step_time.ts";
import { type OptConfig, readOptConfig } from "../src/model/config.ts";
import {
  type StageMemory,
  stageMemory,
  type StageMemoryOptions,
  stageParameterCount,
} from "../src/model/memory.ts";
import type { StorageDtype } from "../src/model/weights.ts";
import type { StageRange } from "../src/model/opt.ts";
import { loraSpecs } from "../src/dpzo/lora.ts";
import { type RunConfig, RunConfigSchema } from "../src/dpzo/config.ts";
import { resolveModelConfig } from "../src/hub/model.ts";
import { UsageError } from "../src/validation.ts";
import { MAX_THREADS, requestedThreads } from "../src/cores/mod.ts";

/** The share of a node's memory a plan leaves free (the OS, allocator slack, estimate error). */
export const HEADROOM = 0.1;
export const GiB = 2 ** 30;

/** What a plan is asked for. */
export interface PlanRequest {
  /** How the user named the model (printed). */
  modelName: string;
  model: OptConfig;
  nodes: number;
  /** Memory of one node, in bytes. */
  nodeBytes: number;
  /** Forced split (default: the fewest stages that fit, and floor(nodes / stages) groups). */
  stages?: number;
  replicas?: number;
  dtype: StorageDtype;
  mode: { type: "full" } | { type: "lora"; rank: number };
  /** Expected examples per step (the run config's train.batch_size). */
  batchSize: number;
  microBatch: number;
  /** Tokens per example (task.max_length: an upper bound on the padded length). */
  seqLen: number;
  activationDtype: "float32" | "float16";
  /** Threads per worker on the nodes (memory only). */
  threads: number;
  /** Positions per example that go through the LM head (1 for classification). */
  headPositionsPerExample: number;
  /** Run id, steps and the update's scalars: the parameter sync's encoded size. */
  runId: string;
  steps: number;
  phi: number;
  lr: number;
  weightDecay: number;
  /** Directions per step (train.directions; default 1): K seeds and coefficients, 2K - 1 more messages. */
  directions?: number;
}

/** One stage of the plan; every replica group has the same. */
export interface PlanStage {
  stage: number;
  /** Decoder layers [first_layer, end_layer). */
  first_layer: number;
  end_layer: number;
  embeddings: boolean;
  head: boolean;
  parameters: number;
  /** Parameters perturbed every pass (all of them, or the LoRA tensors). */
  trainable_parameters: number;
  memory: StageMemory;
}

/** A plan as `dpzo plan --json` prints it: every figure carries its unit in its key. */
export interface RunPlan {
  model: string;
  layers: number;
  hidden_size: number;
  ffn_dim: number;
  vocab_size: number;
  parameters: number;
  dtype: StorageDtype;
  mode: "full" | "lora";
  lora_rank: number | null;
  nodes: number;
  node_memory_bytes: number;
  headroom_fraction: number;
  worker_memory_limit_bytes: number;
  stages: number;
  replicas: number;
  workers: number;
  batch_size: number;
  micro_batch: number;
  seq_len: number;
  micro_batches_per_group_per_pass: number;
  activation_dtype: "float32" | "float16";
  threads_per_worker: number;
  head_positions_per_example: number;
  stage_plan: PlanStage[];
  largest_worker_bytes: number;
  all_workers_bytes: number;
  /** Hidden states between stages in a step: every example at seq_len, all 2K passes. */
  activation_bytes_per_step: number;
  /** One micro-batch's hidden states crossing one stage boundary. */
  activation_bytes_per_micro_batch: number;
  /** step.begin + step.flip + step.update as each worker receives them (the summary's figure). */
  param_sync_bytes_per_step_per_worker: number;
  /** Directions per step (train.directions), when more than one. */
  directions?: number;
  step_time: StepTimeEstimate | null;
}

/** The config.json of a `model` value (a directory, a config file or a Hub id; no weights). */
export async function loadModelConfig(
  model: string,
  opts: { quiet?: boolean; field?: string } = {},
): Promise<OptConfig> {
  return await readOptConfig(await resolveModelConfig(model, { field: "model", ...opts }));
}

/** Positions per example the LM head computes for a task (classification: the answer's). */
export function headPositionsOf(task: string | undefined, seqLen: number): number {
  return task === undefined || task === "sst2" || task === "qnli" ? 1 : seqLen;
}

/** The memory options of a stage worker of a request. */
function memoryOptions(req: PlanRequest): StageMemoryOptions {
  return {
    dtype: req.dtype,
    mode: req.mode,
    microBatch: req.microBatch,
    seqLen: req.seqLen,
    activationDtype: req.activationDtype,
    threads: req.threads,
    headPositions: req.microBatch * req.headPositionsPerExample,
  };
}

/** The stages of a K-way split with their memory. */
function splitStages(req: PlanRequest, K: number): PlanStage[] {
  const plan = planStages(req.model, K);
  const opts = memoryOptions(req);
  return plan.ranges.map((range, k) => ({
    stage: k,
    first_layer: range.firstLayer,
    end_layer: range.endLayer,
    embeddings: range.embeddings,
    head: range.head,
    parameters: plan.parameters[k],
    trainable_parameters: trainableOf(req, range, plan.parameters[k]),
    memory: stageMemory(req.model, range, opts),
  }));
}

function trainableOf(req: PlanRequest, range: StageRange, parameters: number): number {
  if (req.mode.type === "full") return parameters;
  return loraSpecs(req.model, range, req.mode.rank)
    .reduce((n, s) => n + s.shape[0] * s.shape[1], 0);
}

const largest = (stages: PlanStage[]) => Math.max(...stages.map((s) => s.memory.total_bytes));

/** Bytes a worker may use on a node of `nodeBytes`. */
export function workerLimit(nodeBytes: number): number {
  return nodeBytes * (1 - HEADROOM);
}

/** "63.6 GiB", "412.0 MiB", "96.0 KiB", "87 B". */
export function formatBytes(b: number): string {
  if (b >= GiB) return `${(b / GiB).toFixed(1)} GiB`;
  if (b >= 2 ** 20) return `${(b / 2 ** 20).toFixed(1)} MiB`;
  if (b >= 1024) return `${(b / 1024).toFixed(1)} KiB`;
  return `${Math.round(b)} B`;
}

/** "65.7B", "125.2M", "3.3M", "812.0K". */
export function formatCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}K`;
  return String(n);
}

/** "1 stage", "4 stages". */
const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`;
/** "0.042 s", "3.14 s", "42.5 s", "11462 s". */
const seconds = (s: number) => `${s.toFixed(s < 1 ? 3 : s < 10 ? 2 : s < 100 ? 1 : 0)} s`;
const gib = (b: number) => `${(b / GiB).toFixed(1)} GiB`;
/** The smallest whole GiB above `b`, with the headroom added (a --memory-gb that fits). */
const nodeGiBFor = (b: number) => Math.ceil(b / (1 - HEADROOM) / GiB);

/** Why no split of the request fits, and what would: one line. */
function noFit(req: PlanRequest, maxStages: number): string {
  const L = req.model.numLayers;
  const limit = workerLimit(req.nodeBytes);
  const R = req.replicas ?? 1;
  const best = largest(splitStages(req, maxStages));
  const fixes: string[] = [];
  let more = 0;
  for (let K = maxStages + 1; K <= L && !more; K++) {
    if (largest(splitStages(req, K)) <= limit) more = K;
  }
  if (more) fixes.push(`--nodes ${more * R} (${more} stages)`);
  fixes.push(`--memory-gb ${nodeGiBFor(best)}`);
  if (!more && maxStages < L) {
    fixes.push(`--nodes ${L * R} --memory-gb ${nodeGiBFor(largest(splitStages(req, L)))}`);
  }
  if (req.dtype === "float32") {
    const half = { ...req, dtype: "bfloat16" as const };
    if (largest(splitStages(half, maxStages)) <= limit) fixes.push("--dtype bfloat16");
  }
  return `plan: ${req.modelName} (${formatCount(modelParameters(req.model))} ` +
    `parameters, ${req.dtype}) fits no split over ${plural(req.nodes, "node")} of ` +
    `${gib(req.nodeBytes)}: its smallest worker (${plural(maxStages, "stage")}) needs ` +
    `${gib(best)}, more than the ${gib(limit)} a worker may use (${HEADROOM * 100}% headroom); ` +
    `use ${fixes.join(", or ")}`;
}

/** Parameters of the model (the tied LM head once). */
export function modelParameters(model: OptConfig): number {
  return stageParameterCount(model, {
    firstLayer: 0,
    endLayer: model.numLayers,
    embeddings: true,
    head: true,
  });
}

/** The parameter sync of a step as each worker receives it, encoded as a run sends it. */
export function paramSyncBytesPerStep(req: PlanRequest): number {
  const run = req.runId;
  const keyed = hasRunKey(run);
  // Launched runs authenticate every message with a run key (its tag counts).
  if (!keyed) useRunKey(run, new Uint8Array(32));
  try {
    const step = req.steps, seed = "18446744073709551615";
    const K = req.directions ?? 1;
    const extra = K > 1
      ? {
        seeds: { extra_seeds: Array.from({ length: K - 1 }, () => seed) },
        coeffs: { extra_coeffs: Array.from({ length: K - 1 }, () => -req.lr * 0.123456789) },
      }
      : { seeds: {}, coeffs: {} };
    return [
      encodeControl(run, { type: "step.begin", step, seed, phi: req.phi, ...extra.seeds }),
      // One flip per direction, one next between two directions.
      ...Array.from({ length: K }, () => encodeControl(run, { type: "step.flip", step })),
      ...Array.from({ length: K - 1 }, () => encodeControl(run, { type: "step.next", step })),
      encodeControl(run, {
        type: "step.update",
        step,
        coeff: req.phi - req.lr * 0.123456789,
        lr: req.lr,
        weight_decay: req.weightDecay,
        ...extra.coeffs,
      }),
    ].reduce((n, m) => n + m.byteLength, 0);
  } finally {
    if (!keyed) useRunKey(run, null);
  }
}

/**
 * The plan of a request: its split (forced, or the fewest stages that fit), memory, traffic and,
 * given a measurement of this machine, step time. Throws a UsageError (one line naming the fix)
 * when no split fits, or the forced one does not.
 */
export function planRun(req: PlanRequest, speed?: MachineSpeed): RunPlan {
  const L = req.model.numLayers, N = req.nodes;
  const limit = workerLimit(req.nodeBytes);
  if (req.replicas !== undefined && req.replicas > N) {
    throw new UsageError(`--replicas: ${req.replicas} groups need at least ${req.replicas} nodes`);
  }
  const maxStages = Math.min(L, Math.floor(N / (req.replicas ?? 1)));
  let K: number;
  let stages: PlanStage[];
  if (req.stages !== undefined) {
    K = req.stages;
    if (K > L) {
      throw new UsageError(`plan: ${K} stages for a model of ${L} layers; use at most ${L}`);
    }
    if (K * (req.replicas ?? 1) > N) {
      const R = req.replicas ?? 1;
      throw new UsageError(
        `plan: ${plural(K, "stage")} x ${plural(R, "replica")} need ${K * R} nodes, more than ` +
          `--nodes ${N}; give --nodes ${K * R} or fewer --stages/--replicas`,
      );
    }
    stages = splitStages(req, K);
    if (largest(stages) > limit) {
      let fix = "";
      for (let k = K + 1; k <= maxStages; k++) {
        if (largest(splitStages(req, k)) <= limit) {
          fix = `; --stages ${k} fits, or leave --stages out to choose`;
          break;
        }
      }
      if (!fix) throw new UsageError(noFit(req, maxStages));
      throw new UsageError(
        `plan: --stages ${K}: the largest worker needs ${gib(largest(stages))}, more than the ` +
          `${gib(limit)} a worker may use on nodes of ${gib(req.nodeBytes)}${fix}`,
      );
    }
  } else {
    K = 0;
    stages = [];
    for (let k = 1; k <= maxStages; k++) {
      const s = splitStages(req, k);
      if (largest(s) <= limit) {
        K = k;
        stages = s;
        break;
      }
    }
    if (K === 0) throw new UsageError(noFit(req, maxStages));
  }
  const R = req.replicas ?? Math.floor(N / K);
  const micro = Math.ceil(Math.ceil(req.batchSize / req.microBatch) / R);
  const wire = req.activationDtype === "float32" ? 4 : 2;
  const perMicro = req.microBatch * req.seqLen * req.model.hiddenSize * wire;
  const perStep = 2 * (req.directions ?? 1) * req.batchSize * req.seqLen * req.model.hiddenSize *
    wire * (K - 1);
  const stepTime = speed
    ? estimateStepTime(req.model, {
      layers: stages.map((s) => s.end_layer - s.first_layer),
      trainable: stages.map((s) => s.trainable_parameters),
      microBatchesPerGroup: micro,
      microBatch: req.microBatch,
      seqLen: req.seqLen,
      headPositions: req.microBatch * req.headPositionsPerExample,
      directions: req.directions,
    }, speed)
    : null;
  return {
    model: req.modelName,
    layers: L,
    hidden_size: req.model.hiddenSize,
    ffn_dim: req.model.ffnDim,
    vocab_size: req.model.vocabSize,
    parameters: modelParameters(req.model),
    dtype: req.dtype,
    mode: req.mode.type,
    lora_rank: req.mode.type === "lora" ? req.mode.rank : null,
    nodes: N,
    node_memory_bytes: req.nodeBytes,
    headroom_fraction: HEADROOM,
    worker_memory_limit_bytes: limit,
    stages: K,
    replicas: R,
    workers: K * R,
    batch_size: req.batchSize,
    micro_batch: req.microBatch,
    seq_len: req.seqLen,
    micro_batches_per_group_per_pass: micro,
    activation_dtype: req.activationDtype,
    threads_per_worker: req.threads,
    head_positions_per_example: req.headPositionsPerExample,
    stage_plan: stages,
    largest_worker_bytes: largest(stages),
    all_workers_bytes: R * stages.reduce((n, s) => n + s.memory.total_bytes, 0),
    activation_bytes_per_step: perStep,
    activation_bytes_per_micro_batch: perMicro,
    param_sync_bytes_per_step_per_worker: paramSyncBytesPerStep(req),
    ...((req.directions ?? 1) > 1 ? { directions: req.directions } : {}),
    step_time: stepTime,
  };
}

/** The plan for people: the split, a table of memory per worker, traffic and step time. */
export function formatPlan(p: RunPlan): string[] {
  const out: string[] = [];
  out.push(
    `model ${p.model}: ${p.layers} layers, hidden ${p.hidden_size}, ffn ${p.ffn_dim}, vocab ` +
      `${p.vocab_size}; ${formatCount(p.parameters)} parameters`,
  );
  out.push(
    `plan: ${plural(p.stages, "stage")} x ${plural(p.replicas, "replica")} = ` +
      `${plural(p.workers, "worker")} on ${plural(p.nodes, "node")} of ` +
      `${gib(p.node_memory_bytes)} (a worker may use ${gib(p.worker_memory_limit_bytes)}: ` +
      `${p.headroom_fraction * 100}% headroom)`,
  );
  const mode = p.mode === "lora" ? `LoRA rank ${p.lora_rank}` : "full fine-tuning";
  out.push(
    `  weights ${p.dtype}, ${mode}; micro-batch ${p.micro_batch} x ${p.seq_len} tokens; ` +
      `activations ${p.activation_dtype} on the wire; ${p.threads_per_worker} threads per worker`,
  );
  const parts: [keyof StageMemory, string][] = [
    ["weights_bytes", "weights"],
    ["lora_bytes", "lora"],
    ["scratch_bytes", "scratch"],
    ["activations_bytes", "activations"],
    ["messages_bytes", "messages"],
    ["runtime_bytes", "runtime"],
    ["total_bytes", "total"],
  ];
  const shown = parts.filter(([k]) => p.stage_plan.some((s) => s.memory[k] > 0));
  const layers = (s: PlanStage) =>
    `${s.first_layer}-${s.end_layer - 1}${s.embeddings ? " +emb" : ""}${s.head ? " +head" : ""}`;
  const rows = [
    ["stage", "layers", "parameters", ...shown.map(([, h]) => h)],
    ...p.stage_plan.map((s) => [
      String(s.stage),
      layers(s),
      formatCount(s.parameters),
      ...shown.map(([k]) => formatBytes(s.memory[k])),
    ]),
  ];
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  for (const r of rows) {
    out.push(r.map((c, i) => (i < 3 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  "));
  }
  const big = p.stage_plan.reduce((a, b) => (b.memory.total_bytes > a.memory.total_bytes ? b : a));
  out.push(
    `memory per worker: at most ${formatBytes(p.largest_worker_bytes)} (stage ${big.stage}); ` +
      `${plural(p.workers, "worker")} hold ${formatBytes(p.all_workers_bytes)} in all`,
  );
  if (p.stages === 1) out.push("activations between stages: none (one stage)");
  else {
    const wire = p.activation_dtype === "float32" ? 4 : 2;
    const boundaries = p.stages === 2 ? "1 boundary" : `${p.stages - 1} boundaries`;
    out.push(
      `activations between stages: ${formatBytes(p.activation_bytes_per_step)} per step ` +
        `(${p.batch_size} examples x ${p.seq_len} tokens x ${p.hidden_size} x ${wire} B, ` +
        `${boundaries}, ${2 * (p.directions ?? 1)} passes; ${
          formatBytes(p.activation_bytes_per_micro_batch)
        } per ` +
        `micro-batch and boundary)`,
    );
  }
  out.push(
    `parameter sync: ${p.param_sync_bytes_per_step_per_worker} B per step per worker (the seed ` +
      `and scalars of step.begin, step.flip${
        (p.directions ?? 1) > 1 ? ", step.next" : ""
      } and step.update)`,
  );
  const t = p.step_time;
  if (!t) {
    out.push("step time: not measured (--no-step-time)");
    return out;
  }
  const m = t.measured;
  const n = p.micro_batches_per_group_per_pass;
  const micro = `${n} micro-batch${n === 1 ? "" : "es"}`;
  const half = p.dtype === "float32" ? "" : " (more: half storage also widens and rounds)";
  const k = p.directions ?? 1, fwd = 2 * k, passes = 4 * k - 1;
  const dirs = k > 1 ? ` (${k} directions per step)` : "";
  out.push(
    `step time, estimated: ${seconds(t.step_s)} = forward ${fwd} x ${seconds(t.forward_s / fwd)} ` +
      `(${micro} per group through ${plural(p.stages, "stage")}) + perturbation ${passes} x ` +
      `${seconds(t.perturbation_s / passes)}${half}${dirs}; network not counted`,
  );
  out.push(
    `  measured on this machine (${plural(m.threads, "thread")}, ${m.matmul}): one decoder ` +
      `layer's products at ${m.tokens} tokens ${seconds(m.layer_products_s)} ` +
      `(${m.sgemm_gflop_per_s.toFixed(0)} GFLOP/s), attention and the LM head scaled from it; ` +
      `perturbation ${(m.perturb_params_per_s / 1e6).toFixed(0)}M parameters/s`,
  );
  return out;
}

/**
 * Helper threads per worker when `workers` stage workers share this machine (`dpzo launch`):
 * its cores divided among them, unless DPZO_THREADS says.
 */
export function localWorkerThreads(workers: number, env = Deno.env.get("DPZO_THREADS")): number {
  if (env !== undefined && env !== "") return requestedThreads(env);
  return Math.max(1, Math.floor((navigator.hardwareConcurrency || 1) / workers));
}

/** What `dpzo plan` takes on its command line (each overrides the run config's value). */
export interface PlanFlags {
  nodes: number;
  nodeBytes: number;
  stages?: number;
  replicas?: number;
  dtype?: StorageDtype;
  mode?: "full" | "lora";
  loraRank?: number;
  batchSize?: number;
  microBatch?: number;
  seqLen?: number;
  activationDtype?: "float32" | "float16";
  /** Threads per worker on the nodes (default MAX_THREADS, the most a worker uses). */
  threads?: number;
}

/**
 * A plan's request from the flags over a run config (its model, dtype, mode, batch, micro-batch,
 * task.max_length, activation dtype and split), or over the run config's defaults without one.
 */
export function planRequest(
  model: OptConfig,
  modelName: string,
  flags: PlanFlags,
  config?: RunConfig,
  runId = "run",
): PlanRequest {
  const c = config ?? RunConfigSchema.parse({ ...PLAN_DEFAULTS, model: modelName });
  const rank = flags.loraRank ?? (c.mode.type === "lora" ? c.mode.rank : 8);
  const seqLen = flags.seqLen ?? c.task.max_length;
  return {
    modelName,
    model,
    nodes: flags.nodes,
    nodeBytes: flags.nodeBytes,
    stages: flags.stages ?? (config ? c.cluster.stages : undefined),
    replicas: flags.replicas ?? (config ? c.cluster.replicas : undefined),
    dtype: flags.dtype ?? c.dtype,
    mode: (flags.mode ?? c.mode.type) === "lora" ? { type: "lora", rank } : { type: "full" },
    batchSize: flags.batchSize ?? c.train.batch_size,
    microBatch: flags.microBatch ?? c.cluster.micro_batch,
    seqLen,
    activationDtype: flags.activationDtype ?? c.cluster.activation_dtype,
    threads: flags.threads ?? MAX_THREADS,
    headPositionsPerExample: headPositionsOf(config?.task.name, seqLen),
    runId,
    steps: c.train.steps,
    phi: c.train.phi,
    lr: c.train.lr,
    weightDecay: c.train.weight_decay,
    directions: c.train.directions,
  };
}

/** The least run config whose defaults stand in when `dpzo plan` has none. */
const PLAN_DEFAULTS = {
  run_dir: "run",
  task: { name: "sst2", data: "-" },
  train: { steps: 1000, lr: 1e-6 },
};

/** The request of a run config's own split on this machine (`dpzo launch`'s check). */
function localRequest(
  config: RunConfig,
  model: OptConfig,
  split: { stages: number; replicas: number },
): PlanRequest {
  const nodes = split.stages * split.replicas;
  const flags = { nodes, nodeBytes: Infinity, ...split, threads: localWorkerThreads(nodes) };
  return planRequest(model, config.model, flags, config);
}

/** Total bytes of the workers of a split on one machine (sharing its cores). */
function localBytes(req: PlanRequest, stages: number, replicas: number): number {
  const r = { ...req, threads: localWorkerThreads(stages * replicas) };
  return replicas * splitStages(r, stages).reduce((n, s) => n + s.memory.total_bytes, 0);
}

/** Bytes the K x R workers of `split` need on this machine, all together. */
export function localNeedBytes(
  config: RunConfig,
  model: OptConfig,
  split: { stages: number; replicas: number },
): number {
  return localBytes(localRequest(config, model, split), split.stages, split.replicas);
}

/**
 * Why the workers of `split` cannot all run on a machine with `availableBytes` free (one line:
 * GiB needed, GiB available, a split or setting that would fit), or null when they fit.
 */
export function localFitProblem(
  config: RunConfig,
  model: OptConfig,
  split: { stages: number; replicas: number },
  availableBytes: number,
  opts: { command?: string; configPath?: string } = {},
): string | null {
  const { stages: K, replicas: R } = split;
  const req = localRequest(config, model, split);
  const need = localNeedBytes(config, model, split);
  if (need <= availableBytes) return null;
  const what = `${plural(K, "stage")} x ${plural(R, "replica")}`;
  let fix = "";
  const options: { k: number; r: number; bytes: number }[] = [];
  for (let k = 1; k <= K; k++) {
    for (let r = 1; r <= R; r++) {
      if (k === K && r === R) continue;
      const bytes = localBytes(req, k, r);
      if (bytes <= availableBytes) options.push({ k, r, bytes });
    }
  }
  options.sort((a, b) => b.k * b.r - a.k * a.r || b.k - a.k);
  if (options.length) {
    const { k, r, bytes } = options[0];
    const flags = [k !== K ? `--stages ${k}` : "", r !== R ? `--replicas ${r}` : ""]
      .filter(Boolean).join(" ");
    fix = `${flags} would fit (${gib(bytes)})`;
  } else if (config.dtype === "float32") {
    const bytes = localBytes({ ...req, dtype: "bfloat16" }, K, R);
    if (bytes <= availableBytes) fix = `dtype: bfloat16 would fit (${gib(bytes)})`;
  }
  if (!fix) {
    fix = `no split fits this machine (1 stage x 1 replica needs ${
      gib(localBytes(req, 1, 1))
    }); run it over several machines`;
  }
  return `${opts.command ?? "launch"}: ${what} need ${gib(need)} on this machine ` +
    `(${plural(K * R, "worker")}, the largest ${gib(largest(splitStages(req, K)))}), and ` +
    `${gib(availableBytes)} are available; ${fix}; dpzo plan --config ` +
    `${opts.configPath ?? "FILE"} --nodes N --memory-gb G shows splits over N machines`;
}

/**
 * Refuses, before anything starts, a run whose workers on this machine need more memory than
 * it has available (Deno.systemMemoryInfo): `dpzo launch` with the config's split, `dpzo train`
 * with one stage. Reads only the model's config.json.
 */
export async function checkFitsThisMachine(
  config: RunConfig,
  opts: { command?: string; configPath?: string; split?: { stages: number; replicas: number } } =
    {},
): Promise<void> {
  const model = await loadModelConfig(config.model, { quiet: true });
  const split = opts.split ?? config.cluster;
  const problem = localFitProblem(
    config,
    model,
    { stages: split.stages, replicas: split.replicas },
    Deno.systemMemoryInfo().available,
    opts,
  );
  if (problem) throw new UsageError(problem);
}
