/**
 * Privacy units: tiny-squad trains with `privacy.unit: context` (passages Poisson-sampled, a
 * passage's summed g_i clipped) and its statement names the unit; with `example` (the paper's
 * setting) the run names the largest group of training examples that share a passage. And the
 * delta rule: delta >= 1/n warns naming n, delta > 1/n is refused unless allowed.
 */
import { strict as assert } from "node:assert";
import { DATA, dpzo, FIXTURES, missing, readJson, ROOT } from "./fixtures.ts";
import { loadRunConfig } from "../src/dpzo/config.ts";
import { loadTask } from "../cluster/run.ts";
import { checkDelta, trainingUnits } from "../src/dpzo/privacy_units.ts";

const needs = missing(`${FIXTURES}/tiny-opt`) || missing(`${DATA}/squad`);
const sets = [
  "train.steps=3",
  "train.eval_every=0",
  "train.batch_size=8",
  "task.train_examples=300",
  "task.val_examples=2",
  "task.test_examples=2",
];

async function squadRun(dir: string, unit: string) {
  const run = `${dir}/${unit}`;
  const r = await dpzo(
    "train",
    "--config",
    "configs/tiny-squad.yaml",
    "--quiet",
    ...[...sets, `run_dir=${run}`, `privacy.unit=${unit}`].flatMap((s) => ["--set", s]),
  );
  assert.equal(r.code, 0, r.stderr);
  return { r, run };
}

Deno.test({
  name: "tiny-squad trains with privacy.unit: context, and its statement names the unit",
  ignore: needs,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    const { r, run } = await squadRun(dir, "context");
    assert.match(
      r.stdout,
      /privacy: \([0-9.]+, 1e-5\)-DP for add\/remove of one passage with all its training examples \(privacy\.unit: context\) over 3 steps/,
    );
    assert.doesNotMatch(r.stdout, /share a passage/);
    const ledger = (await Deno.readTextFile(`${run}/ledger.jsonl`)).trim().split("\n")
      .map((l) => JSON.parse(l));
    assert.ok(ledger.every((e) => e.unit === "context"));
    const s = readJson(`${run}/summary.json`);
    assert.equal(s.privacy_unit, "context");
    // the same sentence as dpzo privacy for the run's parameters and unit
    const p = await dpzo(
      ...["privacy", "--sampling-rate", String(s.sampling_rate), "--steps", "3"],
      ...["--delta", String(s.delta), "--sigma", String(s.sigma), "--unit", "context"],
    );
    assert.ok(r.stdout.includes(`privacy: ${p.stdout.trim()}\n`), `${r.stdout}\n${p.stdout}`);
    // with passages as units, a batch holds whole passages: the metrics' batch sizes are sums
    // of passage sizes (private, but checked here)
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "tiny-squad with privacy.unit: example names the largest group sharing a passage",
  ignore: needs,
  fn: async () => {
    const config = await loadRunConfig(`${ROOT}configs/tiny-squad.yaml`, [
      `model=${FIXTURES}/tiny-opt`,
      `task.data=${DATA}/squad`,
      ...sets,
    ]);
    const units = trainingUnits((await loadTask(config)).train, "example");
    assert.ok(units.largestPassage! > 1, `largest ${units.largestPassage}`);
    const dir = await Deno.makeTempDir();
    const { r, run } = await squadRun(dir, "example");
    assert.match(r.stdout, /DP for add\/remove of one training example over 3 steps/);
    assert.ok(
      r.stdout.includes(
        `not covered: Up to ${units.largestPassage} training examples share a passage: a ` +
          `passage is protected only as a group of ${units.largestPassage} examples`,
      ),
      r.stdout,
    );
    assert.equal(readJson(`${run}/summary.json`).largest_passage, units.largestPassage);
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test("delta >= 1/n warns naming n; delta > 1/n is refused unless allowed", () => {
  const examples = Array.from({ length: 1000 }, (_, i) => ({
    rows: [],
    label: 0,
    passage: `p${i % 200}`,
  }));
  const ex = trainingUnits(examples, "example");
  const ctx = trainingUnits(examples, "context");
  assert.equal(ex.count, 1000);
  assert.equal(ctx.count, 200);
  assert.equal(ctx.largestPassage, 5);
  const log: string[] = [];
  checkDelta(1e-5, ex, false, (l) => log.push(l));
  assert.equal(log.length, 0);
  checkDelta(1e-3, ex, false, (l) => log.push(l));
  assert.match(log[0], /delta 0\.001 is not below 1\/n = 0\.001 \(n = 1000 training examples\)/);
  assert.throws(
    () => checkDelta(1e-2, ctx, false, () => {}),
    /privacy\.delta: 0\.01 is above 1\/n = 0\.005 for n = 200 passages.*--set privacy\.delta=0\.0001.*allow_large_delta/,
  );
  checkDelta(1e-2, ctx, true, (l) => log.push(l));
  assert.match(log[1], /n = 200 passages/);
  assert.throws(
    () => trainingUnits([{ rows: [], label: 0 }], "context"),
    /privacy\.unit: context needs every training example to name its passage/,
  );
});
