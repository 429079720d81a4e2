/**
 * Actionable warnings (issue 8): a clipping rate above 90% or below 1% names privacy.clip and the
 * direction to move it; a target epsilon the configured steps cannot meet stops the run early
 * with a warning; a learning rate that blows the loss up stops the run with a message naming
 * train.lr, before any NaN reaches the weights. Unit checks of the monitor, then configs made to
 * trigger each warning on the tiny run.
 */
import { strict as assert } from "node:assert";
import { LossBlowUpError, RunMonitor } from "../src/report/warnings.ts";
import { parseRunConfig } from "../src/dpzo/config.ts";
import { planPrivacy } from "../cluster/privacy_plan.ts";
import { DATA, dpzo, FIXTURES, missing, readJson } from "./fixtures.ts";

const needs = missing(`${FIXTURES}/tiny-opt`) || missing(`${DATA}/sst2`);

const step = (i: number, o: Partial<{ loss: number; clipped: number; absG: number }> = {}) => ({
  step: i,
  batch_size: 16,
  loss_plus: o.loss ?? 0.7,
  loss_minus: o.loss ?? 0.7,
  clipped_fraction: o.clipped ?? 0.5,
  mean_abs_g: o.absG ?? 0.05,
});

Deno.test("monitor: clipping above 90% / below 1% warns once each, with the fix", () => {
  const high = new RunMonitor({ private: true, clip: 0.05, lr: 1e-3, steps: 1000 });
  const said: string[] = [];
  for (let i = 1; i <= 120; i++) {
    said.push(...high.observe(step(i, { clipped: 0.97, absG: 0.6 })).map((w) => w.message));
  }
  assert.equal(said.length, 1, "printed once");
  assert.match(said[0], /97% of per-example gradients were clipped over the last 50 steps/);
  assert.match(said[0], /Raise privacy\.clip \(e\.g\. --set privacy\.clip=0\.6/);

  const low = new RunMonitor({ private: true, clip: 100, lr: 1e-3, steps: 1000 });
  const w: string[] = [];
  for (let i = 1; i <= 60; i++) w.push(...low.observe(step(i, { clipped: 0 })).map((x) => x.kind));
  assert.deepEqual(w, ["clip_low"]);

  // Rolling: a clipping rate in range says nothing; nor does a non-private run.
  const ok = new RunMonitor({ private: true, clip: 0.05, lr: 1e-3, steps: 1000 });
  const none = new RunMonitor({ private: false, clip: 0.05, lr: 1e-3, steps: 1000 });
  for (let i = 1; i <= 200; i++) {
    assert.deepEqual(ok.observe(step(i, { clipped: i % 2 ? 0.3 : 0.6 })), []);
    assert.deepEqual(none.observe(step(i, { clipped: 1 })), []);
  }
});

Deno.test("monitor: a loss that blows up throws naming train.lr; noise does not", () => {
  const m = new RunMonitor({ private: true, clip: 0.05, lr: 3, steps: 100 });
  m.observe(step(1, { loss: 0.69 }));
  m.observe(step(2, { loss: 35 }));
  assert.throws(() => m.observe(step(3, { loss: 59000 })), (e: Error) => {
    assert.ok(e instanceof LossBlowUpError);
    assert.match(e.message, /step 3: the training loss blew up .* train\.lr = 3 is too large/);
    assert.match(e.message, /--set train\.lr=0\.3/);
    return true;
  });
  const calm = new RunMonitor({ private: true, clip: 0.05, lr: 1e-3, steps: 1000 });
  for (let i = 1; i <= 500; i++) calm.observe(step(i, { loss: 0.6 + 0.3 * Math.abs(Math.sin(i)) }));
  // Small losses that triple are not a blow-up (the rise must also exceed 1 nat).
  const small = new RunMonitor({ private: true, clip: 0.05, lr: 1e-3, steps: 100 });
  for (let i = 1; i <= 10; i++) small.observe(step(i, { loss: i < 5 ? 0.02 : 0.1 }));
});

Deno.test("monitor with train.stop_on_loss: false: a blow-up is warned about once, never a stop", () => {
  const m = new RunMonitor({ private: true, clip: 0.05, lr: 3, steps: 100, stopOnLoss: false });
  m.observe(step(1, { loss: 0.69 }));
  m.observe(step(2, { loss: 35 }));
  const w = m.observe(step(3, { loss: 59000 }));
  assert.equal(w.length, 1);
  assert.equal(w[0].kind, "loss_blowup");
  assert.match(w[0].message, /train\.lr = 3 is too large.*the run goes on/);
  assert.deepEqual(m.observe(step(4, { loss: 80000 })), []);
  assert.deepEqual(m.observe(step(5, { loss: NaN })), []);
});

Deno.test("a target epsilon the configured steps cannot meet: warning, and the run stops early", () => {
  const config = parseRunConfig({
    run_dir: "r",
    model: "m",
    task: { name: "sst2", data: "d", train_examples: 1000 },
    train: { steps: 1000, lr: 1e-3, batch_size: 16 },
    privacy: { sigma: 1, target_epsilon: 2, delta: 1e-5 },
  }, "c.yaml");
  const log: string[] = [];
  const plan = planPrivacy(config, (l) => log.push(l));
  assert.ok(plan.steps < 1000 && plan.steps > 0, `steps ${plan.steps}`);
  assert.ok(plan.epsilonAt(plan.steps).epsilon <= 2);
  assert.ok(plan.epsilonAt(plan.steps + 1).epsilon > 2);
  assert.equal(log.length, 1);
  assert.match(
    log[0],
    new RegExp(
      `WARNING: 1000 steps would exceed the target epsilon 2; the run stops after ${plan.steps} ` +
        "steps\\. Raise the noise or lower train\\.steps",
    ),
  );
});

async function train(dir: string, ...sets: string[]) {
  const out = await dpzo(
    "train",
    "--config",
    "configs/tiny-sst2.yaml",
    "--quiet",
    ...[
      `run_dir=${dir}`,
      "task.val_examples=16",
      "task.test_examples=16",
      "train.eval_every=0",
      ...sets,
    ].flatMap((s) => ["--set", s]),
  );
  const metrics = (await Deno.readTextFile(`${dir}/metrics.jsonl`).catch(() => "")).trim()
    .split("\n").filter(Boolean).map((l) => JSON.parse(l));
  return { ...out, metrics };
}

Deno.test({
  name: "configs made to trigger them: clip too small, clip too large, target epsilon, lr blow-up",
  ignore: needs,
  fn: async () => {
    const tmp = await Deno.makeTempDir();
    // C = 0.001 clips every |g_i| of the tiny run.
    const high = await train(`${tmp}/high`, "train.steps=12", "privacy.clip=0.001");
    assert.equal(high.code, 0, high.stderr);
    assert.match(
      high.stderr,
      /(9\d|100)% of per-example gradients were clipped .* Raise privacy\.clip/,
    );
    assert.equal(high.metrics.filter((m) => m.event === "warning").length, 1);
    assert.equal(high.metrics.find((m) => m.event === "warning").kind, "clip_high");

    // C = 1000 clips none.
    const low = await train(`${tmp}/low`, "train.steps=12", "privacy.clip=1000");
    assert.equal(low.code, 0, low.stderr);
    assert.match(
      low.stderr,
      /only 0\.0% of per-example gradients were clipped .* Lower privacy\.clip/,
    );

    // A fixed sigma and a target epsilon 20 steps exceed.
    const eps = await train(
      `${tmp}/eps`,
      "train.steps=20",
      "privacy.sigma=1",
      "privacy.target_epsilon=0.65",
      "privacy.clip=0.5",
    );
    assert.equal(eps.code, 0, eps.stderr);
    const m = eps.stderr.match(
      /WARNING: 20 steps would exceed the target epsilon 0\.65; the run stops after (\d+) steps/,
    );
    assert.ok(m, eps.stderr);
    const summary = readJson(`${tmp}/eps/summary.json`);
    assert.equal(summary.steps, Number(m[1]));
    assert.ok(summary.epsilon <= 0.65 && summary.steps < 20);
    const report = await Deno.readTextFile(`${tmp}/eps/report.html`);
    assert.match(report, /would exceed the target epsilon 0\.65; the run stopped after/);

    // Full fine-tuning at lr = 3 blows the loss up within a few steps.
    const lr = await train(
      `${tmp}/lr`,
      "train.steps=30",
      "train.lr=3",
      "privacy.enabled=false",
      "mode={type: full}",
    );
    assert.equal(lr.code, 1);
    // Caught as a rising loss, or (when a sampled batch makes the weights overflow first) as a
    // non-finite loss: either way the message names train.lr.
    assert.match(
      lr.stderr,
      /dpzo: step \d+: the training loss (blew up|is \S+ \/ \S+ \(L\+ \/ L-\)).* train\.lr = 3 is too large/,
    );
    const ledger = (await Deno.readTextFile(`${tmp}/lr/ledger.jsonl`)).trim().split("\n")
      .map((l) => JSON.parse(l));
    assert.ok(ledger.length < 30, `stopped early (${ledger.length} steps)`);
    for (const e of ledger) assert.ok(Number.isFinite(e.ghat) && Number.isFinite(e.update_coeff));
    for (const s of lr.metrics.filter((x) => x.loss_plus !== undefined)) {
      assert.ok(Number.isFinite(s.loss_plus) && Number.isFinite(s.loss_minus), "no NaN loss");
    }
    assert.equal(lr.metrics.at(-1).event, "stopped");
    assert.match(await Deno.readTextFile(`${tmp}/lr/report.html`), /The run stopped: step \d+/);
    await Deno.remove(tmp, { recursive: true });
  },
});
