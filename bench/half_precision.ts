/**
 * Does full fine-tuning with bfloat16 (or float16) weights learn like float32? Runs the same
 * DP-ZO run on SST-2 (the tiny config's task, full fine-tuning, the same `insecure_seed`, so the
 * same batches, noise and directions) with the weights stored as float32 and as bfloat16, and
 * prints the training loss (mean of L+ and L-, over windows of steps) and the validation loss
 * and accuracy at every evaluation side by side, with each run's time. Writes the
 * curves as one SVG (`--svg`, default bench/results/half_precision.svg) for the README.
 *
 *   deno run -A bench/half_precision.ts [--model ../shared/fixtures/small-opt] [--steps 400]
 *     [--lr 1e-3] [--seed 3] [--eval-every 100] [--dtypes float32,bfloat16] [--private]
 *     [--train-examples 1000]
 *
 * `--keep DIR` keeps each finished run's curve as DIR/<dtype>.json and reuses it when the same
 * settings are run again, so an interrupted comparison restarts where it stopped.
 *
 * Non-private (MeZO) by default, so that what is compared is the precision and not the noise;
 * `--private` runs the config's (8, 1e-5)-DP instead.
 */
import { parseArgs } from "node:util";
import { renderSvg, rolling } from "../src/report/charts.ts";
import { dpzoUnlimited as dpzo } from "../test/fixtures.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string", default: "../shared/fixtures/small-opt" },
    steps: { type: "string", default: "400" },
    lr: { type: "string", default: "1e-3" },
    seed: { type: "string", default: "3" },
    "eval-every": { type: "string", default: "100" },
    dtypes: { type: "string", default: "float32,bfloat16" },
    private: { type: "boolean", default: false },
    svg: { type: "string", default: "bench/results/half_precision.svg" },
    window: { type: "string", default: "50" },
    keep: { type: "string" },
    "train-examples": { type: "string", default: "1000" },
  },
});

interface Curve {
  dtype: string;
  train: { step: number; loss: number }[];
  evals: { step: number; loss: number; accuracy: number }[];
  wallS: number;
  hash: string;
}

async function run(dtype: string): Promise<Curve> {
  const dir = await Deno.makeTempDir({ prefix: `dpzo-half-${dtype}-` });
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
    `dtype=${dtype}`,
    "--set",
    "mode={type: full}",
    "--set",
    `insecure_seed=${values.seed}`,
    "--set",
    `train.steps=${values.steps}`,
    "--set",
    `train.lr=${values.lr}`,
    "--set",
    `train.eval_every=${values["eval-every"]}`,
    "--set",
    `task.train_examples=${values["train-examples"]}`,
    "--set",
    "task.val_examples=200",
    "--set",
    "task.test_examples=16",
    ...(values.private ? [] : ["--set", "privacy.enabled=false"]),
  );
  const wallS = (performance.now() - t0) / 1000;
  if (r.code !== 0) throw new Error(`${dtype}: ${r.stderr}`);
  const lines = (await Deno.readTextFile(`${dir}/run/metrics.jsonl`)).trim().split("\n")
    .map((l) => JSON.parse(l));
  const summary = JSON.parse(await Deno.readTextFile(`${dir}/run/summary.json`));
  await Deno.remove(dir, { recursive: true });
  return {
    dtype,
    train: lines.filter((m) => m.event === undefined && typeof m.step === "number")
      .map((m) => ({ step: m.step, loss: (m.loss_plus + m.loss_minus) / 2 })),
    evals: lines.filter((m) => m.event === "eval" && m.split === "val")
      .map((m) => ({ step: m.step, loss: m.loss, accuracy: m.accuracy })),
    wallS,
    hash: summary.final_weights_sha256,
  };
}

/** A finished run's curve, reused from `--keep DIR` when it was made with the same settings. */
async function curveFor(dtype: string): Promise<Curve> {
  const settings = { ...values, dtypes: undefined, svg: undefined, keep: undefined, dtype };
  const file = values.keep ? `${values.keep}/${dtype}.json` : undefined;
  if (file) {
    try {
      const kept = JSON.parse(await Deno.readTextFile(file));
      if (JSON.stringify(kept.settings) === JSON.stringify(settings)) {
        console.error(`${dtype}: reusing ${file}`);
        return kept.curve;
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
  console.error(`training with ${dtype} weights ...`);
  const curve = await run(dtype);
  if (file) {
    await Deno.mkdir(values.keep!, { recursive: true });
    await Deno.writeTextFile(`${file}.tmp`, JSON.stringify({ settings, curve }));
    await Deno.rename(`${file}.tmp`, file);
  }
  return curve;
}

const curves: Curve[] = [];
for (const dtype of values.dtypes!.split(",")) curves.push(await curveFor(dtype));

const window = Number(values.window);
console.log(
  `model ${values.model}, SST-2 (${values["train-examples"]} training examples), full ` +
    `fine-tuning, ${values.steps} steps, lr ${values.lr}, ` +
    `seed ${values.seed}, ${values.private ? "(8, 1e-5)-DP" : "non-private (MeZO)"}`,
);
console.log(`\ntraining loss, mean over the ${window} steps up to:`);
const header = ["step", ...curves.map((c) => c.dtype)];
console.log(`| ${header.join(" | ")} |\n|${header.map(() => " --- ").join("|")}|`);
const smoothed = curves.map((c) => rolling(c.train.map((t) => t.loss), window));
for (let s = window; s <= curves[0].train.length; s += window) {
  console.log(`| ${s} | ${smoothed.map((m) => m[s - 1]?.toFixed(4) ?? "-").join(" | ")} |`);
}
console.log(`\nvalidation loss / accuracy:`);
console.log(`| ${header.join(" | ")} |\n|${header.map(() => " --- ").join("|")}|`);
for (const e of curves[0].evals) {
  const cells = curves.map((c) => {
    const m = c.evals.find((x) => x.step === e.step);
    return m ? `${m.loss.toFixed(4)} / ${(m.accuracy * 100).toFixed(1)}%` : "-";
  });
  console.log(`| ${e.step} | ${cells.join(" | ")} |`);
}
console.log("");
for (const c of curves) {
  console.log(`${c.dtype}: ${c.wallS.toFixed(0)} s, final_weights_sha256 ${c.hash.slice(0, 12)}`);
}

const rows = curves.flatMap((c, i) => [
  ...smoothed[i].map((loss, k) => ({
    step: c.train[k].step,
    value: loss,
    series: `${c.dtype} train`,
  })),
  ...c.evals.map((e) => ({ step: e.step, value: e.loss, series: `${c.dtype} validation` })),
]);
const svg = await renderSvg({
  title: `SST-2, full fine-tuning: training loss (${window}-step mean) and validation loss`,
  data: { values: rows },
  mark: { type: "line", point: false, strokeWidth: 1.5 },
  encoding: {
    x: { field: "step", type: "quantitative", title: "step" },
    y: { field: "value", type: "quantitative", title: "loss (nats)", scale: { zero: false } },
    color: { field: "series", type: "nominal", title: null },
    strokeDash: { field: "series", type: "nominal", title: null },
  },
});
await Deno.mkdir(new URL(".", `file://${Deno.cwd()}/${values.svg}`).pathname, { recursive: true });
await Deno.writeTextFile(values.svg!, svg);
console.error(`wrote ${values.svg}`);
