/**
 * Does the ZO step descend on small-opt? Runs `dpzo train` on SST-2 with fixed seeds,
 * non-private (MeZO) and DP with a large epsilon, and prints the mean training loss over the
 * first and last 100 steps and the validation loss before and after.
 *
 *   deno run -A bench/descent.ts [--model ../shared/fixtures/small-opt] [--steps 200] [--seed 1]
 */
import { parseArgs } from "node:util";
import { descentRun } from "../test/descent_test.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string", default: "../shared/fixtures/small-opt" },
    steps: { type: "string", default: "200" },
    seed: { type: "string", default: "1" },
    lr: { type: "string", default: "1e-3" },
  },
});
async function run(label: string, extra: string[]) {
  const r = await descentRun(values.model!, Number(values.steps), [
    "--set",
    `insecure_seed=${values.seed}`,
    "--set",
    `train.lr=${values.lr}`,
    "--set",
    "train.log_every=100",
    ...extra,
  ]);
  console.log(JSON.stringify({
    run: label,
    train_loss_first: r.trainFirst,
    train_loss_last: r.trainLast,
    val_loss_before: r.valBefore,
    val_loss_after: r.valAfter,
    epsilon: r.epsilon,
    wall_s: r.wallS,
  }));
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
