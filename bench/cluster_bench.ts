/**
 * Step time of a sharded run over NATS against the embedded default, on small-opt:
 *
 *   embedded (one process)  |  K = 2 stages (2 workers)  |  R = 2 replica groups (2 workers)
 *
 * Each run trains the same config (insecure_seed, so the three end bit-identical; checked) and
 * the figure is the median `step_s` of metrics.jsonl after the first step. Run:
 *
 *   deno run -A bench/cluster_bench.ts [--steps 8] [--micro-batch 4] [--model DIR]
 */
import { parseArgs } from "node:util";

const ROOT = new URL("..", import.meta.url).pathname;
const { values } = parseArgs({
  args: Deno.args,
  options: {
    steps: { type: "string", default: "8" },
    "micro-batch": { type: "string", default: "4" },
    "batch-size": { type: "string", default: "16" },
    model: { type: "string", default: `${ROOT}../shared/fixtures/small-opt` },
  },
});

async function dpzo(args: string[]): Promise<void> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["task", "--quiet", "dpzo", ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (out.code !== 0) throw new Error(new TextDecoder().decode(out.stderr));
}

const dir = await Deno.makeTempDir({ prefix: "dpzo-cluster-bench-" });
const common = (run: string) => [
  "--config",
  "configs/tiny-sst2.yaml",
  "--quiet",
  "--set",
  `run_dir=${dir}/${run}`,
  "--set",
  `model=${values.model}`,
  "--set",
  `train.steps=${values.steps}`,
  "--set",
  `train.batch_size=${values["batch-size"]}`,
  "--set",
  "train.eval_every=0",
  "--set",
  "task.val_examples=4",
  "--set",
  "task.test_examples=4",
  "--set",
  "insecure_seed=11",
  "--set",
  `cluster.micro_batch=${values["micro-batch"]}`,
];
const runs: [string, string[]][] = [
  ["embedded", ["train", ...common("embedded")]],
  ["K=2 (NATS)", ["launch", ...common("k2"), "--stages", "2"]],
  ["R=2 (NATS)", ["launch", ...common("r2"), "--replicas", "2"]],
];
const median = (a: number[]) => {
  const s = [...a].sort((x, y) => x - y);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
let base = NaN, hash = "";
console.log(
  `small-opt, ${values.steps} steps, expected batch ${values["batch-size"]}, micro-batch ${
    values["micro-batch"]
  }, ${navigator.hardwareConcurrency} cores`,
);
console.log("run          step_s (median)  vs embedded  activations/step  param sync/step/worker");
for (const [name, args] of runs) {
  await dpzo(args);
  const run = args[args.indexOf("--set") + 1].slice("run_dir=".length);
  const steps = (await Deno.readTextFile(`${run}/metrics.jsonl`)).trim().split("\n")
    .map((l) => JSON.parse(l)).filter((m) => m.step_s !== undefined && m.event === undefined);
  const t = median(steps.slice(1).map((m) => m.step_s));
  const summary = JSON.parse(await Deno.readTextFile(`${run}/summary.json`));
  if (!hash) hash = summary.final_weights_sha256;
  else if (hash !== summary.final_weights_sha256) throw new Error(`${name}: weights differ`);
  if (Number.isNaN(base)) base = t;
  console.log(
    `${name.padEnd(12)} ${t.toFixed(3).padStart(15)}  ${(base / t).toFixed(2).padStart(10)}x  ${
      (summary.activation_bytes_per_step / 1024).toFixed(0).padStart(12)
    } KiB  ${summary.param_sync_bytes_per_step_per_worker.toFixed(0).padStart(18)} B`,
  );
}
console.log(`final_weights_sha256 identical: ${hash}`);
await Deno.remove(dir, { recursive: true });
