/**
 * The run configuration of `dpzo train`: YAML or JSON, validated with zod, every field
 * overridable from the command line with `--set path.to.field=value`.
 *
 * Field names follow the paper and MeZO: `train.phi` is MeZO's perturbation scale epsilon,
 * `privacy.clip` the per-example clipping threshold C, `train.batch_size` the expected Poisson
 * batch size q n.
 */
import { z } from "zod";
import YAML from "yaml";
import { UsageError } from "../validation.ts";
import { describeConfigError, type Override } from "./config_errors.ts";
import { TASK_NAMES } from "../tasks/task.ts";

const Lora = z.object({
  rank: z.number().int().positive().default(8),
  alpha: z.number().positive().default(16),
  init_seed: z.number().int().nonnegative().default(0),
}).strict();

const Privacy = z.object({
  enabled: z.boolean().default(true),
  mechanism: z.enum(["gaussian", "laplace"]).default("gaussian"),
  clip: z.number().positive().default(0.05),
  delta: z.number().gt(0).lt(1).default(1e-5),
  /** Target epsilon: sigma (or b) is calibrated to it unless given. */
  target_epsilon: z.number().positive().nullish(),
  /** Gaussian noise multiplier (std sigma * clip). */
  sigma: z.number().positive().nullish(),
  /** Laplace scale multiplier (scale b * clip). */
  b: z.number().positive().nullish(),
  accountant: z.enum(["pld", "prv", "rdp"]).default("pld"),
  /**
   * What the guarantee protects: one training `example` (the paper's setting), or one
   * `context` (SQuAD, DROP: a passage and all the training examples asked about it; passages are
   * Poisson-sampled, the sum of a passage's g_i is clipped to C, and q is over passages).
   */
  unit: z.enum(["example", "context"]).default("example"),
  /** delta above 1/n (n units) is refused unless this is set: such a delta protects nobody. */
  allow_large_delta: z.boolean().default(false),
}).strict();

const Task = z.object({
  name: z.enum(TASK_NAMES),
  /**
   * A file or directory of the task's data: GLUE TSV (sst2, qnli), SQuAD JSON, the DROP
   * JSONL.gz, JSONL with the same fields, or Hugging Face parquet exports (src/data).
   */
  data: z.string().min(1),
  train_examples: z.number().int().positive().default(1000),
  val_examples: z.number().int().nonnegative().default(500),
  test_examples: z.number().int().nonnegative().default(1000),
  split_seed: z.number().int().nonnegative().default(42),
  max_length: z.number().int().positive().default(128),
}).strict();

const Train = z.object({
  steps: z.number().int().positive(),
  lr: z.number().positive(),
  phi: z.number().positive().default(1e-3),
  batch_size: z.number().positive().default(16),
  weight_decay: z.number().nonnegative().default(0),
  eval_every: z.number().int().nonnegative().default(0),
  eval_examples: z.number().int().positive().optional(),
  log_every: z.number().int().positive().default(10),
  /**
   * Full snapshots of the trainable tensors every N steps (0: none), in RUN_DIR/snapshots: a
   * replacement worker and `export` replay the ledger from the newest one.
   */
  snapshot_every: z.number().int().nonnegative().default(0),
  /**
   * Stop when the training loss turns non-finite or blows up (src/report/warnings.ts). The
   * decision reads un-noised training losses, which epsilon does not cover, and the privacy
   * statement says so; false keeps every step to the plan (a non-finite g_i then counts 0).
   */
  stop_on_loss: z.boolean().default(true),
  /**
   * Directions per step, K (DP-AggZO, Bao et al. 2025): 2K forwards per step, each example's
   * K-vector of finite differences clipped in L2 to privacy.clip and noised as one Gaussian
   * release of sensitivity C (the same epsilon per step as K = 1). 1 is DP-ZO, as before.
   */
  directions: z.number().int().min(1).max(64).default(1),
}).strict();

/** Sharding over NATS (`dpzo launch`): K pipeline stages x R replica groups. */
const Cluster = z.object({
  stages: z.number().int().positive().default(1),
  replicas: z.number().int().positive().default(1),
  /** Activations between stages on the wire; float16 halves the traffic but is not bit-exact. */
  activation_dtype: z.enum(["float32", "float16"]).default("float32"),
  /** Examples per micro-batch sent down a pipeline (several are in flight at once). */
  micro_batch: z.number().int().positive().default(16),
  /**
   * A stage worker silent this long is lost: the step in flight is aborted and the coordinator
   * waits for a replacement (`dpzo worker`, or the launcher restarts it). The last resort, for a
   * host that vanishes without closing its connection: a worker whose process ends is noticed
   * within seconds by its closed connection, and heartbeats come from a thread of their own, so
   * a long forward pass does not count as silence.
   */
  heartbeat_timeout_s: z.number().positive().default(30),
}).strict();

export const RunConfigSchema = z.object({
  run_dir: z.string().min(1),
  model: z.string().min(1),
  backend: z.enum(["wasm", "cpu", "tensorflow"]).default("wasm"),
  /**
   * How the base weights are stored (Hugging Face's torch_dtype): float32, or bfloat16 /
   * float16 at 2 bytes per weight, computed in float32 (src/model/weights.ts).
   */
  dtype: z.enum(["float32", "bfloat16", "float16"]).default("float32"),
  /** Makes sampling, noise and seeds reproducible. The run is then NOT private. */
  insecure_seed: z.number().int().nonnegative().nullable().default(null),
  mode: z.discriminatedUnion("type", [
    z.object({ type: z.literal("full") }).strict(),
    z.object({ type: z.literal("lora") }).extend(Lora.shape).strict(),
  ]).default({ type: "full" }),
  task: Task,
  train: Train,
  privacy: Privacy.default(Privacy.parse({})),
  cluster: Cluster.default(Cluster.parse({})),
}).strict();

export type RunConfig = z.infer<typeof RunConfigSchema>;

/** Applies `path.to.field=value` (value parsed as YAML: numbers, booleans, null, strings). */
export function applyOverride(
  raw: Record<string, unknown>,
  assignment: string,
  label = `--set ${assignment}`,
): void {
  const eq = assignment.indexOf("=");
  if (eq <= 0) {
    throw new UsageError(`${label}: expected key=value, e.g. --set train.steps=100`);
  }
  const path = assignment.slice(0, eq).split(".");
  const value = YAML.parse(assignment.slice(eq + 1));
  let node: Record<string, unknown> = raw;
  for (const key of path.slice(0, -1)) {
    if (typeof node[key] !== "object" || node[key] === null) node[key] = {};
    node = node[key] as Record<string, unknown>;
  }
  node[path[path.length - 1]] = value;
}

/**
 * Validates a raw config; errors name the field, prefixed by `source`, or by the `--set` among
 * `overrides` that gave the value (config_errors.ts).
 */
export function parseRunConfig(
  raw: unknown,
  source: string,
  overrides: readonly (string | Override)[] = [],
): RunConfig {
  const r = RunConfigSchema.safeParse(raw);
  if (!r.success) {
    throw new UsageError(describeConfigError(r.error, RunConfigSchema, raw, source, overrides));
  }
  const c = r.data;
  if (c.backend === "tensorflow") {
    throw new UsageError(
      `${source}: backend: tensorflow cannot train: tfjs-node keeps tensors in libtensorflow's ` +
        `memory, which cannot be perturbed in place; use backend: wasm (score and eval still ` +
        `take --backend tensorflow)`,
    );
  }
  if (c.privacy.enabled) {
    const { mechanism, sigma, b, target_epsilon } = c.privacy;
    if (mechanism === "gaussian" && b != null) {
      throw new UsageError(
        `${source}: privacy.b: is the Laplace scale; use privacy.sigma with gaussian`,
      );
    }
    if (mechanism === "laplace" && sigma != null) {
      throw new UsageError(
        `${source}: privacy.sigma: is the Gaussian multiplier; use privacy.b with laplace`,
      );
    }
    if (sigma == null && b == null && target_epsilon == null) {
      throw new UsageError(
        `${source}: privacy: set target_epsilon (noise is calibrated to it) or the noise ` +
          `(sigma for gaussian, b for laplace), or privacy.enabled: false for a non-private run`,
      );
    }
  }
  if (c.privacy.enabled && c.privacy.mechanism === "laplace" && c.train.directions > 1) {
    throw new UsageError(
      `${source}: train.directions: ${c.train.directions} directions need the Gaussian ` +
        `mechanism (Laplace would need an L1 clip and its own sensitivity); use ` +
        `privacy.mechanism: gaussian or train.directions: 1`,
    );
  }
  if (c.privacy.unit === "context" && c.task.name !== "squad" && c.task.name !== "drop") {
    throw new UsageError(
      `${source}: privacy.unit: context protects passages shared by several examples (squad, ` +
        `drop); ${c.task.name} has none: use privacy.unit: example`,
    );
  }
  if (c.train.batch_size > c.task.train_examples) {
    throw new UsageError(
      `${source}: train.batch_size (${c.train.batch_size}) exceeds task.train_examples ` +
        `(${c.task.train_examples})`,
    );
  }
  return c;
}

/**
 * The overrides of the `DPZO_SET` environment variable: `key=value` assignments separated by
 * spaces, applied after the command line's `--set` (e.g. `DPZO_SET="train.steps=20"` makes a
 * quick smoke run of any config; the README's test runs the README so).
 */
export function envOverrides(value = Deno.env.get("DPZO_SET") ?? ""): string[] {
  return value.split(/\s+/).filter((s) => s !== "");
}

/**
 * Reads a YAML or JSON config file and applies the `--set` overrides, then those of `DPZO_SET`
 * (`fromEnv`).
 */
export async function loadRunConfig(
  path: string,
  overrides: string[] = [],
  fromEnv: string[] = [],
): Promise<RunConfig> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UsageError(`--config: ${path} not found`);
    throw e;
  }
  let raw: unknown;
  try {
    raw = YAML.parse(text);
  } catch (e) {
    throw new UsageError(`${path}: not valid YAML/JSON (${(e as Error).message.split("\n")[0]})`);
  }
  if (typeof raw !== "object" || raw === null) throw new UsageError(`${path}: expected a mapping`);
  const all: Override[] = [
    ...overrides.map((o) => ({ set: o, label: `--set ${o}` })),
    ...fromEnv.map((o) => ({ set: o, label: `DPZO_SET ${o}` })),
  ];
  for (const o of all) applyOverride(raw as Record<string, unknown>, o.set, o.label);
  return parseRunConfig(raw, path, all);
}
