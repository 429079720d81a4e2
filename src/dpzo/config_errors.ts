/**
 * Messages for a run configuration that does not validate: one line, each problem naming the
 * field, where the value came from (the file or the `--set` that gave it), what is expected, an
 * example, and for an unknown field the known one it most likely meant:
 *
 *   configs/x.yaml: trian: unknown field; did you mean train? (train is required, e.g.
 *   train: {steps: 1000, lr: 1.0e-3}); --set train.stpes=100: unknown field train.stpes; did
 *   you mean train.steps?
 */
import type { z } from "zod";

/** A valid value of each field, shown with what is expected. */
const EXAMPLES: Record<string, string> = {
  run_dir: "runs/my-run",
  model: "../shared/fixtures/tiny-opt (a checkpoint folder) or facebook/opt-125m (a Hub id)",
  backend: "wasm",
  insecure_seed: "null (private) or 0 (tests only: NOT private)",
  mode: "{type: lora, rank: 8, alpha: 16} or {type: full}",
  "mode.type": "lora",
  "mode.rank": "8",
  "mode.alpha": "16",
  "mode.init_seed": "0",
  task: "{name: sst2, data: ../shared/data/sst2}",
  "task.name": "sst2",
  "task.data": "../shared/data/sst2",
  "task.train_examples": "1000",
  "task.val_examples": "500",
  "task.test_examples": "1000",
  "task.split_seed": "42",
  "task.max_length": "128",
  train: "{steps: 1000, lr: 1.0e-3}",
  "train.steps": "1000",
  "train.lr": "1.0e-3",
  "train.phi": "1.0e-3",
  "train.batch_size": "16",
  "train.weight_decay": "0",
  "train.eval_every": "250",
  "train.eval_examples": "200",
  "train.log_every": "10",
  "train.snapshot_every": "100",
  privacy: "{target_epsilon: 8, delta: 1.0e-5, clip: 1.0}",
  "privacy.enabled": "true",
  "privacy.mechanism": "gaussian",
  "privacy.clip": "1.0",
  "privacy.delta": "1.0e-5",
  "privacy.target_epsilon": "8",
  "privacy.sigma": "0.6",
  "privacy.b": "100",
  "privacy.accountant": "pld",
  cluster: "{stages: 2, replicas: 1}",
  "cluster.stages": "2",
  "cluster.replicas": "1",
  "cluster.activation_dtype": "float32",
  "cluster.micro_batch": "16",
  "cluster.heartbeat_timeout_s": "30",
};

// deno-lint-ignore no-explicit-any
type AnySchema = any;

/** The schema of the field at `path`, through defaults, optionals and unions. */
function schemaAt(schema: AnySchema, path: readonly PropertyKey[]): AnySchema[] {
  let nodes: AnySchema[] = [schema];
  const unwrap = (s: AnySchema): AnySchema[] => {
    const t = s?.def?.type;
    if (t === "default" || t === "optional" || t === "nullable" || t === "prefault") {
      return unwrap(s.def.innerType);
    }
    if (t === "union") return s.def.options.flatMap(unwrap);
    if (t === "pipe") return unwrap(s.def.in);
    return [s];
  };
  nodes = nodes.flatMap(unwrap);
  for (const key of path) {
    nodes = nodes.flatMap((s) =>
      s?.def?.type === "object" && s.shape[key as string] ? unwrap(s.shape[key as string]) : []
    );
  }
  return nodes;
}

/** The field names an object at `path` accepts. */
export function knownFields(schema: AnySchema, path: readonly PropertyKey[]): string[] {
  const names = new Set<string>();
  for (const s of schemaAt(schema, path)) {
    if (s?.def?.type === "object") { for (const k of Object.keys(s.shape)) names.add(k); }
  }
  return [...names];
}

/** Edit distance (insertions, deletions, substitutions, adjacent swaps). */
export function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.length][b.length];
}

/** The known name closest to `name`, when it is close enough to be a typo. */
export function closest(name: string, known: readonly string[]): string | undefined {
  let best: string | undefined, bestD = Infinity;
  for (const k of known) {
    const d = editDistance(name.toLowerCase(), k.toLowerCase());
    if (d < bestD) [best, bestD] = [k, d];
  }
  return best !== undefined && bestD <= Math.max(1, Math.floor(best.length / 3)) ? best : undefined;
}

function valueAt(raw: unknown, path: readonly PropertyKey[]): unknown {
  let v = raw;
  for (const k of path) {
    if (typeof v !== "object" || v === null) return undefined;
    v = (v as Record<string, unknown>)[k as string];
  }
  return v;
}

function shown(v: unknown): string {
  if (v === undefined) return "nothing";
  const s = JSON.stringify(v);
  return s.length > 40 ? `${s.slice(0, 37)}...` : s;
}

const TYPE_WORDS: Record<string, string> = {
  number: "a number",
  string: "a string",
  boolean: "true or false",
  object: "a mapping",
  array: "a list",
};

/** "e.g. steps: 1000" for `train.steps`, or "" when there is no example. */
function eg(path: string): string {
  const e = EXAMPLES[path];
  return e ? `e.g. ${path.split(".").at(-1)}: ${e}` : "";
}

function example(path: string): string {
  return eg(path) ? ` (${eg(path)})` : "";
}

/** What is wrong with one value, and what would do. */
function problem(issue: z.core.$ZodIssue, raw: unknown): string {
  const path = issue.path.map(String).join(".");
  const value = valueAt(raw, issue.path);
  switch (issue.code) {
    case "invalid_type":
      if (value === undefined) return `required${example(path)}`;
      return `expected ${TYPE_WORDS[issue.expected] ?? issue.expected}, got ${shown(value)}` +
        example(path);
    case "invalid_value":
      return `expected one of ${issue.values.map((v) => String(v)).join(", ")}, got ${
        shown(value)
      }`;
    case "too_small":
    case "too_big": {
      const bound = issue.code === "too_small" ? issue.minimum : issue.maximum;
      const op = issue.code === "too_small"
        ? (issue.inclusive ? ">=" : ">")
        : (issue.inclusive ? "<=" : "<");
      return `expected a value ${op} ${bound}, got ${shown(value)}${example(path)}`;
    }
    default: {
      const m = issue.message.replace(/^Invalid input: /, "");
      return `${m}${value !== undefined ? `, got ${shown(value)}` : ""}${example(path)}`;
    }
  }
}

/** An override `key=value` and how the user gave it (`--set key=value`, `DPZO_SET key=value`). */
export interface Override {
  set: string;
  label: string;
}

/**
 * One line for a config that failed `schema`: each problem prefixed by where its value came
 * from — `source` (the file) or the override that set it (the last one wins); a plain string
 * override is a `--set`.
 */
export function describeConfigError(
  error: z.ZodError,
  schema: z.ZodType,
  raw: unknown,
  source: string,
  overrides: readonly (string | Override)[] = [],
): string {
  const all = overrides.map((o) => typeof o === "string" ? { set: o, label: `--set ${o}` } : o);
  const setOf = (path: string): string | undefined => {
    for (const o of [...all].reverse()) {
      const key = o.set.slice(0, Math.max(0, o.set.indexOf("=")));
      if (key === path || path.startsWith(`${key}.`) || key.startsWith(`${path}.`)) return o.label;
    }
    return undefined;
  };
  const parts: { from: string; text: string }[] = [];
  const explained = new Set<string>(); // missing fields that a typo explains
  const issues = error.issues;
  for (const issue of issues) {
    if (issue.code !== "unrecognized_keys") continue;
    const known = knownFields(schema, issue.path);
    for (const key of issue.keys) {
      const path = [...issue.path.map(String), key].join(".");
      const guess = closest(key, known);
      const guessPath = guess && [...issue.path.map(String), guess].join(".");
      const missing = guessPath !== undefined &&
        issues.some((i) =>
          i.code === "invalid_type" && i.path.map(String).join(".") === guessPath &&
          valueAt(raw, i.path) === undefined
        );
      if (missing) explained.add(guessPath!);
      const fields = known.length ? `; the fields here: ${known.join(", ")}` : "";
      parts.push({
        from: setOf(path) ?? source,
        text: `${path}: unknown field` +
          (guessPath
            ? `; did you mean ${guessPath}?${
              missing
                ? ` (${[`${guessPath} is required`, eg(guessPath!)].filter((x) => x).join(", ")})`
                : ""
            }`
            : fields),
      });
    }
  }
  for (const issue of issues) {
    if (issue.code === "unrecognized_keys") continue;
    const path = issue.path.map(String).join(".");
    if (explained.has(path)) continue;
    parts.push({
      from: setOf(path) ?? source,
      text: `${path || "config"}: ${problem(issue, raw)}`,
    });
  }
  // Grouped by origin, the file's problems first.
  const order = [...new Set([source, ...parts.map((p) => p.from)])];
  return order
    .map((from) => {
      const mine = parts.filter((p) => p.from === from).map((p) => p.text);
      return mine.length ? `${from}: ${mine.join("; ")}` : "";
    })
    .filter((s) => s)
    .join("; ");
}
