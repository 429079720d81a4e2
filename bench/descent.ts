/**
 * Does the ZO step descend on small-opt? Runs `dpzo train` on SST-2 with fixed seeds,
 * non-private (MeZO) and DP with a large epsilon, and prints the mean training loss over the
 * first and last 100 steps and the validation loss before and after.
 *
 *   deno run -A bench/descent.ts [--model ../shared/fixtures/small-opt] [--steps 200] [--seed 1]
 */
import { parseArgs } from "node:util";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string", default: "../shared/fixtures/small-opt" },
    steps: { type: "string", default: "200" },
    seed: { type: "string", default: "1" },
    lr: { type: "string", default: "1e-3" },
  },
});
const root = new URL("..", import.meta.url).pathname;

async function run(label: string, extra: string[]) {
  const dir = await Deno.makeTempDir();
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "task",
      "--quiet",
      "dpzo",
      "train",
      "--config",
      "configs/tiny-sst2.yaml",
      "--quiet",
      "--set",
      `run_dir=${dir}/run`,
      "--set",
      `model=${values.model}`,
      "--set",
      `insecure_seed=${values.seed}`,
      "--set",
      `train.steps=${values.steps}`,
      "--set",
      `train.lr=${values.lr}`,
      "--set",
      "train.eval_every=100000",
      "--set",
      "train.log_every=100",
      "--set",
      "task.val_examples=200",
      "--set",
      "task.test_examples=16",
      ...extra,
    ],
    cwd: root,
    stderr: "inherit",
    stdout: "piped",
  }).output();
  if (out.code !== 0) throw new Error(`${label}: dpzo train failed`);
  const summary = JSON.parse(await Deno.readTextFile(`${dir}/run/summary.json`));
  const evals = (await Deno.readTextFile(`${dir}/run/metrics.jsonl`)).trim().split("\n")
    .map((l) => JSON.parse(l)).filter((m) => m.event === "eval" && m.split === "val");
  const before = evals.find((m) => m.step === 0).loss;
  const r = {
    run: label,
    train_loss_first: summary.train_loss_first,
    train_loss_last: summary.train_loss_last,
    val_loss_before: before,
    val_loss_after: summary.final.val_loss,
    epsilon: summary.epsilon,
    wall_s: summary.wall_s,
  };
  console.log(JSON.stringify(r));
  await Deno.remove(dir, { recursive: true });
}

await run("non-private", ["--set", "privacy.enabled=false"]);
await run("dp-large-epsilon", [
  "--set",
  "privacy.sigma=0.5",
  "--set",
  "privacy.clip=5",
  "--set",
  "privacy.target_epsilon=null",
]);
