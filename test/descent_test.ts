/**
 * The ZO step descends: with fixed seeds, the mean training loss over the last steps is below
 * that of the first steps, and the validation loss after training is below the base model's —
 * non-private (MeZO) and DP with a large epsilon. On tiny-opt to keep the suite short;
 * `bench/descent.ts` runs the same check on small-opt.
 */
import { strict as assert } from "node:assert";
import { DATA, dpzo, FIXTURES, missing, readJson } from "./fixtures.ts";

/**
 * Trains `model` for `steps` on the tiny SST-2 config (seed 2, lr 1e-3; `extra` flags come last
 * and override) and returns the losses before and after. `bench/descent.ts` uses it too.
 */
export async function descentRun(model: string, steps: number, extra: string[]) {
  const dir = await Deno.makeTempDir();
  const out = await dpzo(
    "train",
    "--config",
    "configs/tiny-sst2.yaml",
    "--quiet",
    "--set",
    `run_dir=${dir}/run`,
    "--set",
    `model=${model}`,
    "--set",
    "insecure_seed=2",
    "--set",
    `train.steps=${steps}`,
    "--set",
    "train.lr=1e-3",
    "--set",
    "train.eval_every=100000",
    "--set",
    "task.val_examples=200",
    "--set",
    "task.test_examples=16",
    ...extra,
  );
  assert.equal(out.code, 0, out.stderr);
  const summary = readJson(`${dir}/run/summary.json`);
  const evals = (await Deno.readTextFile(`${dir}/run/metrics.jsonl`)).trim().split("\n")
    .map((l) => JSON.parse(l)).filter((m) => m.event === "eval" && m.split === "val");
  const baseVal = evals.find((m) => m.step === 0).loss;
  await Deno.remove(dir, { recursive: true });
  return {
    trainFirst: summary.train_loss_first as number,
    trainLast: summary.train_loss_last as number,
    valBefore: baseVal as number,
    valAfter: summary.final.val_loss as number,
    epsilon: summary.epsilon as number | null,
    wallS: summary.wall_s as number,
  };
}

const needs = missing(`${FIXTURES}/tiny-opt`) || missing(`${DATA}/sst2`);

Deno.test({
  name: "non-private (MeZO) ZO steps descend on tiny-opt",
  ignore: needs,
  fn: async () => {
    const r = await descentRun(`${FIXTURES}/tiny-opt`, 300, ["--set", "privacy.enabled=false"]);
    console.log(r);
    assert.ok(r.trainLast < r.trainFirst, `train loss ${r.trainFirst} -> ${r.trainLast}`);
    assert.ok(r.valAfter < r.valBefore, `val loss ${r.valBefore} -> ${r.valAfter}`);
  },
});

Deno.test({
  name: "DP-ZO steps with a large epsilon descend on tiny-opt",
  ignore: needs,
  fn: async () => {
    const r = await descentRun(`${FIXTURES}/tiny-opt`, 300, [
      "--set",
      "privacy.sigma=0.5",
      "--set",
      "privacy.clip=5",
      "--set",
      "privacy.target_epsilon=null",
    ]);
    console.log(r);
    assert.ok(r.trainLast < r.trainFirst, `train loss ${r.trainFirst} -> ${r.trainLast}`);
    assert.ok(r.valAfter < r.valBefore, `val loss ${r.valBefore} -> ${r.valAfter}`);
  },
});
