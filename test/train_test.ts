/**
 * `dpzo train` and `dpzo export` as the README shows them: the tiny config runs, prints
 * epsilon, writes the run directory, and export replays the ledger to the same
 * final_weights_sha256. Configuration errors name the field.
 */
import { strict as assert } from "node:assert";
import { parseRunConfig } from "../src/dpzo/config.ts";
import { DATA, dpzo, FIXTURES, missing, readJson } from "./fixtures.ts";

const needs = missing(`${FIXTURES}/tiny-opt`) || missing(`${DATA}/sst2`);

// LoRA: test/export_test.ts trains a LoRA run and checks the same, and the merged export.
for (const mode of ["full"]) {
  Deno.test({
    name: `dpzo train (${mode}) then dpzo export give the same final_weights_sha256`,
    ignore: needs,
    fn: async () => {
      const dir = await Deno.makeTempDir();
      const run = `${dir}/run`;
      const r = await dpzo(
        "train",
        "--config",
        "configs/tiny-sst2.yaml",
        "--quiet",
        "--set",
        `run_dir=${run}`,
        "--set",
        "train.steps=30",
        "--set",
        "train.eval_every=10",
        "--set",
        "task.val_examples=20",
        "--set",
        "task.test_examples=20",
        "--set",
        `mode={type: ${mode}}`,
      );
      assert.equal(r.code, 0, r.stderr);
      assert.match(
        r.stdout,
        /privacy: \([0-9.]+, 1e-5\)-DP for add\/remove of one training example over 30 steps/,
      );
      const summary = readJson(`${run}/summary.json`);
      assert.ok(summary.epsilon > 0 && summary.epsilon <= 8, `epsilon ${summary.epsilon}`);
      assert.equal(summary.private, true);
      assert.equal(summary.steps, 30);
      assert.ok(summary.param_sync_bytes_per_step_per_worker <= 200);
      const ledger = (await Deno.readTextFile(`${run}/ledger.jsonl`)).trim().split("\n");
      assert.equal(ledger.length, 30);
      const metrics = (await Deno.readTextFile(`${run}/metrics.jsonl`)).trim().split("\n").map((
        l,
      ) => JSON.parse(l));
      assert.equal(metrics.filter((m) => m.event === "eval" && m.split === "val").length, 4);
      const e = await dpzo("export", "--run", run, "--out", `${dir}/out`);
      assert.equal(e.code, 0, e.stderr);
      assert.match(e.stdout, new RegExp(`final_weights_sha256: ${summary.final_weights_sha256}`));
      const files = [...Deno.readDirSync(`${dir}/out`)].map((f) => f.name);
      assert.ok(files.includes("model.safetensors"));
      assert.ok(!files.includes("adapter"), "a full-parameter run has no adapter");
      await Deno.remove(dir, { recursive: true });
    },
  });
}

Deno.test({
  name: "a run directory that already holds a run is not overwritten",
  ignore: needs,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    await Deno.writeTextFile(`${dir}/ledger.jsonl`, "");
    const r = await dpzo("train", "--config", "configs/tiny-sst2.yaml", "--set", `run_dir=${dir}`);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /run_dir: .* already holds a run/);
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test("a config error names the field and the fix", () => {
  const good = {
    run_dir: "r",
    model: "m",
    task: { name: "sst2", data: "d" },
    train: { steps: 10, lr: 1e-3 },
    privacy: { target_epsilon: 1 },
  };
  assert.doesNotThrow(() => parseRunConfig(good, "c.yaml"));
  assert.throws(
    () => parseRunConfig({ ...good, train: { steps: -1, lr: 1e-3 } }, "c.yaml"),
    /c\.yaml: train\.steps: /,
  );
  assert.throws(() => parseRunConfig({ ...good, trian: {} }, "c.yaml"), /c\.yaml: .*trian/);
  assert.throws(
    () => parseRunConfig({ ...good, privacy: {} }, "c.yaml"),
    /privacy: set target_epsilon .* or privacy\.enabled: false/,
  );
  assert.throws(
    () => parseRunConfig({ ...good, privacy: { mechanism: "laplace", sigma: 1 } }, "c.yaml"),
    /privacy\.sigma: is the Gaussian multiplier; use privacy\.b with laplace/,
  );
});
