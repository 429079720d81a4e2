/**
 * `dpzo train` runs QNLI, SQuAD and DROP from their configs in configs/ (a few steps on the tiny
 * fixture), and `dpzo eval` prints each task's metric, for the base model and for a run.
 */
import { strict as assert } from "node:assert";
import { DATA, dpzo, FIXTURES, missing, readJson } from "./fixtures.ts";

for (const task of ["qnli", "squad", "drop"] as const) {
  Deno.test({
    name: `dpzo train runs configs/tiny-${task}.yaml and dpzo eval --run prints its metric`,
    ignore: missing(`${FIXTURES}/tiny-opt`) || missing(`${DATA}/${task}`),
    fn: async () => {
      const dir = await Deno.makeTempDir();
      const run = `${dir}/run`;
      const r = await dpzo(
        "train",
        "--config",
        `configs/tiny-${task}.yaml`,
        "--quiet",
        "--set",
        `run_dir=${run}`,
        "--set",
        "train.steps=3",
        "--set",
        "train.eval_every=2",
        "--set",
        "task.val_examples=3",
        "--set",
        "task.test_examples=3",
      );
      assert.equal(r.code, 0, r.stderr);
      const s = readJson(`${run}/summary.json`);
      assert.equal(s.steps, 3);
      assert.ok(Number.isFinite(s.train_loss_first) && s.train_loss_first > 0);
      const evals = (await Deno.readTextFile(`${run}/metrics.jsonl`)).trim().split("\n")
        .map((l) => JSON.parse(l)).filter((m) => m.event === "eval");
      if (task === "qnli") {
        assert.ok(s.final.test_accuracy >= 0 && s.final.test_accuracy <= 1);
      } else {
        assert.ok(s.final.test_f1 >= 0 && s.final.test_f1 <= 1, JSON.stringify(s.final));
        assert.ok(s.final.test_em >= 0 && s.final.test_em <= 1);
        assert.equal(s.final.test_accuracy, null);
        assert.ok(evals.every((m) => typeof m.f1 === "number" && m.loss > 0));
      }
      const e = await dpzo("eval", "--run", run, "--limit", "3", "--json");
      assert.equal(e.code, 0, e.stderr);
      const rep = JSON.parse(e.stdout);
      assert.equal(rep.task, task);
      assert.equal(rep.steps, 3);
      assert.equal(rep.examples, 3);
      assert.match(
        rep.split_source,
        /^the run's test split: task\.test_examples \d+, drawn with split_seed \d+ from .*; the first 3 \(--limit 3\)$/,
      );
      if (task === "qnli") assert.equal(rep.accuracy, s.final.test_accuracy);
      else {
        // The replayed model generates what the live run's model did on the same test split.
        assert.equal(rep.f1, s.final.test_f1);
        assert.equal(rep.em, s.final.test_em);
      }
      await Deno.remove(dir, { recursive: true });
    },
  });
}

Deno.test({
  name: "dpzo eval prints the metric of the base model",
  ignore: missing(`${FIXTURES}/tiny-opt`) || missing(`${DATA}/squad`),
  fn: async () => {
    const e = await dpzo(
      "eval",
      "--model",
      `${FIXTURES}/tiny-opt`,
      "--task",
      "squad",
      "--data",
      `${DATA}/squad`,
      "--limit",
      "2",
    );
    assert.equal(e.code, 0, e.stderr);
    assert.match(
      e.stdout,
      /^squad test, 2 examples \(the task.s default test split: up to 1000 examples drawn with split_seed 42 from .*squad; the first 2 \(--limit 2\)\), .*tiny-opt: F1 [0-9.]+%, EM [0-9.]+%\n$/,
    );
    const bad = await dpzo("eval", "--model", `${FIXTURES}/tiny-opt`);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--task: required without --run/);
  },
});
