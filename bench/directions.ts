/**
 * K directions per step (DP-AggZO) against DP-ZO at the same epsilon: `dpzo train` runs of the
 * tiny SST-2 config on a model (small-opt by default) with train.directions K = 1, 2, 4, 8, each
 * calibrated to the same target epsilon over its own steps, in two regimes:
 *
 * - equal forward passes: every run gets the same budget F of training forwards (K = 1 runs
 *   F / 2 steps, K directions F / (2 K) steps, so larger K also means fewer, less noisy steps);
 * - equal steps: every run takes S steps (K directions cost 2 K S forwards).
 *
 * Validation accuracy and loss are recorded at equal forward-pass intervals. Writes, under --out:
 * directions.json (every eval point and each run's epsilon, sigma, wall time), directions.md (the
 * table), directions-accuracy.svg and directions-loss.svg (against training forward passes).
 * Results are written after every run, so a stopped sweep keeps what it has, and a sweep run
 * again with the same --out skips the runs its directions.json already holds.
 *
 *   deno run -A bench/directions.ts [--model ../shared/fixtures/small-opt]
 *     [--data ../shared/data/sst2] [--forwards 1600] [--steps 200] [--directions 1,2,4,8]
 *     [--epsilon 8] [--evals 5] [--lr 1e-3] [--seed 1] [--out bench/results] [--non-private]
 */
import { parseArgs } from "node:util";
import { renderSvg } from "../src/report/charts.ts";
import { dpzoUnlimited as dpzo } from "../test/fixtures.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string", default: "../shared/fixtures/small-opt" },
    data: { type: "string", default: "../shared/data/sst2" },
    forwards: { type: "string", default: "1600" },
    steps: { type: "string", default: "200" },
    directions: { type: "string", default: "1,2,4,8" },
    epsilon: { type: "string", default: "8" },
    evals: { type: "string", default: "5" },
    lr: { type: "string", default: "1e-3" },
    seed: { type: "string", default: "1" },
    val: { type: "string", default: "200" },
    out: { type: "string", default: "bench/results" },
    /** MeZO with K directions (privacy.enabled: false): whether K finds more signal at all. */
    "non-private": { type: "boolean", default: false },
  },
});

const F = Number(values.forwards), S = Number(values.steps), evals = Number(values.evals);
const Ks = values.directions!.split(",").map(Number);
const out = values.out!;

interface Point {
  regime: "equal forwards" | "equal steps";
  K: number;
  step: number;
  forwards: number;
  accuracy: number;
  loss: number;
}
interface RunRow {
  regime: Point["regime"];
  K: number;
  steps: number;
  forwards: number;
  /** null: a non-private run. */
  epsilon: number | null;
  sigma: number | null;
  val_accuracy: number;
  val_loss: number;
  wall_s: number;
}

const points: Point[] = [];
const runs: RunRow[] = [];
try {
  const done = JSON.parse(await Deno.readTextFile(`${out}/directions.json`));
  runs.push(...done.runs);
  points.push(...done.points);
} catch (e) {
  if (!(e instanceof Deno.errors.NotFound)) throw e;
}

async function run(regime: Point["regime"], K: number, steps: number): Promise<void> {
  if (runs.some((r) => r.regime === regime && r.K === K && r.steps === steps)) return;
  const dir = await Deno.makeTempDir({ prefix: "dpzo-directions-" });
  // Evaluations at equal forward-pass intervals: every steps / evals steps.
  const every = Math.max(1, Math.round(steps / evals));
  const t0 = performance.now();
  const r = await dpzo(
    "train",
    "--config",
    "configs/tiny-sst2.yaml",
    "--quiet",
    "--set",
    `run_dir=${dir}/run`,
    "--set",
    `model=${values.model}`,
    "--set",
    `task.data=${values.data}`,
    "--set",
    `insecure_seed=${values.seed}`,
    "--set",
    `train.steps=${steps}`,
    "--set",
    `train.directions=${K}`,
    "--set",
    `train.lr=${values.lr}`,
    "--set",
    `train.eval_every=${every}`,
    "--set",
    "train.log_every=100000",
    "--set",
    `task.val_examples=${values.val}`,
    "--set",
    "task.test_examples=16",
    ...(values["non-private"]
      ? ["--set", "privacy.enabled=false"]
      : ["--set", `privacy.target_epsilon=${values.epsilon}`]),
  );
  const wall = (performance.now() - t0) / 1000;
  if (r.code !== 0) {
    throw new Error(`K=${K} ${regime}: ${r.stderr.split("\n").slice(-3).join(" ")}`);
  }
  const summary = JSON.parse(await Deno.readTextFile(`${dir}/run/summary.json`));
  const lines = (await Deno.readTextFile(`${dir}/run/metrics.jsonl`)).trim().split("\n")
    .map((l) => JSON.parse(l));
  for (const m of lines) {
    if (m.event !== "eval" || m.split !== "val") continue;
    points.push({
      regime,
      K,
      step: m.step,
      forwards: 2 * K * m.step,
      accuracy: m.accuracy,
      loss: m.loss,
    });
  }
  runs.push({
    regime,
    K,
    steps,
    forwards: 2 * K * steps,
    epsilon: summary.epsilon,
    sigma: summary.sigma ?? null,
    val_accuracy: summary.final.val_accuracy,
    val_loss: summary.final.val_loss,
    wall_s: wall,
  });
  console.log(JSON.stringify(runs.at(-1)));
  await Deno.remove(dir, { recursive: true });
  await write();
}

function table(): string {
  const head = "| regime | K | steps | training forwards | epsilon | sigma | val accuracy | " +
    "val loss | wall s |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
  return head +
    runs.map((r) =>
      `| ${r.regime} | ${r.K} | ${r.steps} | ${r.forwards} | ${
        r.epsilon === null ? "none" : r.epsilon.toFixed(3)
      } | ${r.sigma === null ? "-" : r.sigma.toFixed(3)} | ${
        (100 * r.val_accuracy).toFixed(1)
      }% | ${r.val_loss.toFixed(4)} | ${r.wall_s.toFixed(0)} |`
    ).join("\n") + "\n";
}

function chart(field: "accuracy" | "loss", title: string): Promise<string> {
  return renderSvg({
    data: { values: points.map((p) => ({ ...p, K: `K=${p.K}` })) },
    mark: { type: "line", point: true },
    encoding: {
      x: { field: "forwards", type: "quantitative", title: "training forward passes" },
      y: { field, type: "quantitative", title, scale: { zero: false } },
      color: { field: "K", type: "nominal", title: "directions" },
      strokeDash: { field: "regime", type: "nominal", title: "regime" },
      detail: { field: "regime" },
    },
  });
}

async function writeAtomic(path: string, text: string): Promise<void> {
  await Deno.writeTextFile(`${path}.tmp`, text);
  await Deno.rename(`${path}.tmp`, path);
}

async function write(): Promise<void> {
  await Deno.mkdir(out, { recursive: true });
  const settings = { ...values, note: "insecure_seed: reproducible, not private" };
  await writeAtomic(
    `${out}/directions.json`,
    JSON.stringify({ settings, runs, points }, null, 1) + "\n",
  );
  await writeAtomic(
    `${out}/directions.md`,
    `K directions per step at ${
      values["non-private"] ? "no privacy (MeZO)" : `epsilon ${values.epsilon}`
    } (bench/directions.ts; ${values.model}, ` +
      `equal forwards ${F}, equal steps ${S}, lr ${values.lr}, seed ${values.seed})\n\n` +
      table(),
  );
  await writeAtomic(`${out}/directions-accuracy.svg`, await chart("accuracy", "val accuracy"));
  await writeAtomic(`${out}/directions-loss.svg`, await chart("loss", "val loss"));
}

for (const K of Ks) await run("equal forwards", K, Math.round(F / (2 * K)));
for (const K of Ks) {
  // A run of the first regime with S steps already is the same run.
  const same = runs.find((r) => r.regime === "equal forwards" && r.K === K && r.steps === S);
  if (runs.some((r) => r.regime === "equal steps" && r.K === K)) continue;
  if (same) {
    runs.push({ ...same, regime: "equal steps" });
    for (const p of points.filter((p) => p.regime === "equal forwards" && p.K === K)) {
      points.push({ ...p, regime: "equal steps" });
    }
    await write();
  } else await run("equal steps", K, S);
}
console.log(table());
