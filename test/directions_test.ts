/**
 * K directions per step (DP-AggZO, `train.directions`): the rounded K-vector of a unit stays
 * within the sensitivity D, the ledger and the control messages carry the K seeds and released
 * values, a worker in the middle of a K-direction step completes it from the ledger bit for
 * bit, and end to end a K = 4 run exports, resumes and runs over two stages on a real
 * nats-server with the same final_weights_sha256 (a bfloat16 K = 2 run exports to its hash too);
 * its epsilon is that of one direction, and Laplace with K > 1 is refused.
 */
import { strict as assert } from "node:assert";
import { clipRoundVector, privatizeDirections } from "../src/dpzo/mechanism.ts";
import {
  FUSED_PIECE,
  mezoDecayApplies,
  type NamedTensor,
  perturb,
  perturbPasses,
} from "../src/dpzo/perturbation.ts";
import { insecureRandom } from "../src/dpzo/randomness.ts";
import {
  encodeLedgerLine,
  type LedgerEntry,
  parseLedgerLine,
  stepPasses,
} from "../src/checkpoint/ledger.ts";
import { type ControlMessage, decodeControl, encodeControl } from "../cluster/protocol.ts";
import { parseRunConfig } from "../src/dpzo/config.ts";
import { parsePrivacyFlags, runPrivacy } from "../cluster/cli/privacy.ts";
import { planPrivacy } from "../cluster/privacy_plan.ts";
import { initBackend } from "../src/tensor/backend.ts";
import { openCheckpoint } from "../src/model/checkpoint.ts";
import { stageParameters, wholeModel } from "../src/model/opt.ts";
import { loadStage } from "../src/model/load.ts";
import {
  applyEntryPasses,
  createStageWorker,
  handleControl,
  sliceDigest,
  syncWorker,
} from "../cluster/worker.ts";
import { DATA, dpzo, FIXTURES, lacks, ledgerOf, missing, readJson } from "./fixtures.ts";

const TINY = `${FIXTURES}/tiny-opt`;

Deno.test("a unit's rounded K-vector stays within D units in L2, even on a coarse grid", () => {
  const rng = insecureRandom(3);
  for (const K of [2, 4, 8]) {
    const D = 10, C = 0.5;
    let worst = 0, clipped = 0;
    for (let trial = 0; trial < 2000; trial++) {
      // Mostly long vectors (clipped), spread evenly over the coordinates where rounding adds most.
      const scale = trial % 3 === 0 ? C * rng.uniform() : C * (1 + 10 * rng.uniform());
      const u = Array.from(
        { length: K },
        () => (rng.uniform() < 0.5 ? -1 : 1) * (0.9 + 0.1 * rng.uniform()),
      );
      const n = Math.hypot(...u);
      const r = clipRoundVector(u.map((x) => (x / n) * scale), C, D, rng);
      assert.ok(r.units.every(Number.isInteger));
      worst = Math.max(worst, Math.hypot(...r.units));
      if (r.clipped) clipped++;
    }
    assert.ok(worst <= D, `K=${K}: a rounded vector of norm ${worst} > D = ${D}`);
    assert.ok(clipped > 0);
  }
  // A grid too coarse for the margin is refused rather than silently over the sensitivity.
  assert.throws(() => clipRoundVector([1, 1, 1, 1], 1, 2, rng), /too coarse/);
});

Deno.test("non-private K-vector: the batch means of g_ik / K (the paper's scaling)", () => {
  const g = [Float64Array.from([1, 3]), Float64Array.from([-2, 6]), Float64Array.from([0, 4])];
  const r = privatizeDirections(g, { private: false }, insecureRandom(1));
  assert.equal(r.ghats.length, 3);
  for (const x of r.ghats) assert.ok(Math.abs(x - 2 / 3) < 1e-15, `${r.ghats}`);
});

Deno.test("private K-vector: one noise per coordinate, ghat_k = sum_units_k (C/D) / (q n)", () => {
  const g = [Float64Array.from([0.1, 0.2, 0.3]), Float64Array.from([-0.1, 0.05, 0.4])];
  const how = {
    private: true as const,
    mechanism: "gaussian" as const,
    clip: 0.2,
    noiseMultiplier: 1,
    gridUnits: 4096,
    expectedBatchSize: 3,
  };
  const r = privatizeDirections(g, how, insecureRandom(5));
  assert.equal(r.sumUnits!.length, 2);
  r.sumUnits!.forEach((s, k) => assert.equal(r.ghats[k], (s * (0.2 / 4096)) / 3));
  assert.notEqual(r.sumUnits![0], r.sumUnits![1]);
  assert.throws(
    () => privatizeDirections(g, { ...how, mechanism: "laplace" }, insecureRandom(5)),
    /Gaussian/,
  );
});

Deno.test("K update passes in one sweep give the bits of the passes one by one (JS and WASM)", () => {
  const sizes: [string, number][] = [
    ["a.weight", FUSED_PIECE + 4 * 1000 + 3], // cut in pieces; not a multiple of 4
    ["a.bias", 37],
    ["b.weight", 5000],
    ["b.layer_norm.weight", 64],
  ];
  const base = sizes.map(([name, n]) => ({
    name,
    data: Float32Array.from({ length: n }, (_, i) => Math.sin(i + name.length)),
  }));
  const copy = (): NamedTensor[] => base.map((t) => ({ name: t.name, data: t.data.slice() }));
  const weightDecay = { lr: 0.01, decay: 0.1, appliesTo: mezoDecayApplies };
  const passes = [
    { seed: 11n, coeff: 0.00093, weightDecay },
    { seed: 12n, coeff: -1.7e-5 },
    { seed: 13n, coeff: 2.3e-4 },
  ];
  for (const impl of ["js", "auto"] as const) {
    const one = copy(), fused = copy();
    for (const p of passes) perturb(one, p.seed, p.coeff, { impl, weightDecay: p.weightDecay });
    perturbPasses(fused, passes, { impl });
    one.forEach((t, i) => assert.deepEqual(fused[i].data, t.data, `${impl} ${t.name}`));
    assert.notDeepEqual(one[0].data, base[0].data);
  }
});

function entryK2(): LedgerEntry {
  const lr = 0.01, phi = 0.001;
  return {
    step: 1,
    seed: "1234567890123",
    phi,
    ghat: 0.5,
    lr,
    update_coeff: phi - lr * 0.5,
    weight_decay: 0,
    q: 0.5,
    mechanism: "none",
    extra_directions: [{ seed: "987654321", ghat: -0.25, update_coeff: -(lr * -0.25) }],
  };
}

Deno.test("ledger: a K-direction line round-trips, an altered extra coefficient is refused", () => {
  const e = entryK2();
  assert.deepEqual(parseLedgerLine(encodeLedgerLine(e).trim(), "l:1"), e);
  const bad = { ...e, extra_directions: [{ ...e.extra_directions![0], update_coeff: 1 }] };
  assert.throws(() => parseLedgerLine(encodeLedgerLine(bad).trim(), "l:1"), /extra_directions/);
  // Passes: +phi, -2phi, +phi of the extra; +phi, -2phi, restore+update of the last; extra update.
  const p = stepPasses(e).map((x) => [String(x.seed), x.coeff, x.update]);
  assert.deepEqual(p, [
    ["987654321", 0.001, false],
    ["987654321", -0.002, false],
    ["987654321", 0.001, false],
    ["1234567890123", 0.001, false],
    ["1234567890123", -0.002, false],
    ["1234567890123", e.update_coeff, true],
    ["987654321", e.extra_directions![0].update_coeff, true],
  ]);
  // One direction: the three passes of before.
  const { extra_directions: _x, ...one } = e;
  assert.equal(stepPasses(one).length, 3);
});

Deno.test("protocol: K-direction begin, next and update round-trip; one-direction tuples unchanged", () => {
  const logs: string[] = [];
  const msgs: ControlMessage[] = [
    { type: "step.begin", step: 3, seed: "5", phi: 0.001, extra_seeds: ["6", "7", "8"] },
    { type: "step.next", step: 3 },
    {
      type: "step.update",
      step: 3,
      coeff: 0.0009,
      lr: 0.01,
      weight_decay: 0,
      extra_coeffs: [0.1, -0.2, 0.3],
    },
  ];
  for (const m of msgs) {
    assert.deepEqual(decodeControl(encodeControl("r", m), "r", (l) => logs.push(l)), m);
  }
  const one = encodeControl("r", { type: "step.begin", step: 3, seed: "5", phi: 0.001 });
  const more = encodeControl("r", msgs[0]);
  assert.ok(more.byteLength > one.byteLength);
  assert.deepEqual(decodeControl(one, "r", (l) => logs.push(l)), {
    type: "step.begin",
    step: 3,
    seed: "5",
    phi: 0.001,
  });
  assert.deepEqual(logs, []);
});

Deno.test({
  name: "worker: a K=2 step live, replayed, and completed from the ledger mid-step: one digest",
  ignore: missing(TINY),
  fn: async () => {
    await initBackend("wasm");
    const ckpt = await openCheckpoint(TINY);
    const fresh = async () => {
      const stage = await loadStage(ckpt, wholeModel(ckpt.config));
      return createStageWorker(stage, stageParameters(ckpt.config, stage.range).map((s) => s.name));
    };
    const e = entryK2();
    const begin: ControlMessage = {
      type: "step.begin",
      step: 1,
      seed: e.seed,
      phi: e.phi,
      extra_seeds: [e.extra_directions![0].seed],
    };
    const live = await fresh();
    const base = sliceDigest(live);
    handleControl(live, begin);
    handleControl(live, { type: "step.flip", step: 1 });
    // The update before the last direction was measured is out of order.
    assert.throws(
      () =>
        handleControl(live, {
          type: "step.update",
          step: 1,
          coeff: e.update_coeff,
          lr: e.lr,
          weight_decay: 0,
          extra_coeffs: [e.extra_directions![0].update_coeff],
        }),
      /out of order/,
    );
    handleControl(live, { type: "step.next", step: 1 });
    assert.throws(() => handleControl(live, { type: "step.next", step: 1 }), /out of order/);
    handleControl(live, { type: "step.flip", step: 1 });
    handleControl(live, {
      type: "step.update",
      step: 1,
      coeff: e.update_coeff,
      lr: e.lr,
      weight_decay: 0,
      extra_coeffs: [e.extra_directions![0].update_coeff],
    });
    const want = sliceDigest(live);
    assert.notEqual(want, base);

    const replayed = await fresh();
    applyEntryPasses(replayed, e);
    assert.equal(sliceDigest(replayed), want);

    // In the + pass of the second direction when the coordinator went away: the ledger holds it.
    let mid = await fresh();
    handleControl(mid, begin);
    handleControl(mid, { type: "step.flip", step: 1 });
    handleControl(mid, { type: "step.next", step: 1 });
    mid = await syncWorker(mid, 1, () => Promise.resolve(e), () => {
      throw new Error("no rebuild expected");
    });
    assert.equal(mid.appliedStep, 1);
    assert.equal(sliceDigest(mid), want);
  },
});

Deno.test("Laplace with K > 1 is refused with one line naming the field (config and privacy)", () => {
  const raw = {
    run_dir: "r",
    model: "m",
    task: { name: "sst2", data: "d" },
    train: { steps: 10, lr: 1e-3, directions: 4 },
    privacy: { mechanism: "laplace", b: 2 },
  };
  assert.throws(
    () => parseRunConfig(raw, "c.yaml"),
    (e: Error) =>
      /^c\.yaml: train\.directions: 4 directions need the Gaussian mechanism/.test(e.message) &&
      !e.message.includes("\n"),
  );
  assert.equal(parseRunConfig({ ...raw, privacy: { sigma: 1 } }, "c.yaml").train.directions, 4);
  assert.throws(
    () =>
      parsePrivacyFlags({
        samplingRate: "0.01",
        steps: "10",
        delta: "1e-5",
        b: "2",
        mechanism: "laplace",
        accountant: "pld",
        directions: "4",
      }),
    /--directions above 1 needs --mechanism gaussian/,
  );
});

Deno.test("K directions on a noise grid too coarse for them: refused, or a warning, before the run", () => {
  const raw = (sigma: number) => ({
    run_dir: "r",
    model: "m",
    task: { name: "sst2", data: "d" },
    train: { steps: 10, lr: 1e-3, directions: 4 },
    privacy: { sigma },
  });
  // sigma 2000: a grid of round(4096 / 2000) = 2 units, below sqrt(4) + 1.
  assert.throws(
    () => planPrivacy(parseRunConfig(raw(2000), "c.yaml"), () => {}),
    (e: Error) =>
      /^train\.directions: 4 directions need a noise grid finer/.test(e.message) &&
      !e.message.includes("\n"),
  );
  // sigma 400: 10 units, the radius 8 units is 80% of C: said.
  const said: string[] = [];
  planPrivacy(parseRunConfig(raw(400), "c.yaml"), (l) => said.push(l));
  assert.ok(said.some((l) => /clip to 8\.00 units \(80% of C\)/.test(l)), said.join("\n"));
  // sigma 1: 4096 units, nothing to say.
  const quiet: string[] = [];
  planPrivacy(parseRunConfig(raw(1), "c.yaml"), (l) => quiet.push(l));
  assert.ok(!quiet.some((l) => l.includes("directions clip")), quiet.join("\n"));
});

const common = [
  "--config",
  "configs/tiny-sst2.yaml",
  "--quiet",
  "--set",
  "task.train_examples=64",
  "--set",
  "task.val_examples=8",
  "--set",
  "task.test_examples=8",
  "--set",
  "train.eval_every=0",
  "--set",
  "insecure_seed=7",
  "--set",
  "privacy.sigma=1",
  "--set",
  "privacy.target_epsilon=null",
  "--set",
  "cluster.micro_batch=3",
  "--set",
  "mode={type: full}",
];

Deno.test({
  name: "K=4 trains, exports, resumes and runs on 2 stages over NATS with one hash; same epsilon",
  ignore: lacks("nats-server") || missing(TINY) || missing(`${DATA}/sst2`),
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "dpzo-directions-" });
    try {
      const k4 = [...common, "--set", "train.steps=3", "--set", "train.directions=4"];
      const run = `${dir}/embedded`;
      const t = await dpzo("train", ...k4, "--set", `run_dir=${run}`);
      assert.equal(t.code, 0, t.stderr);
      const s = readJson(`${run}/summary.json`);
      const ledger = await ledgerOf(run);
      assert.equal(ledger.length, 3);
      for (const e of ledger) assert.equal((e.extra_directions as unknown[]).length, 3);
      assert.equal(s.directions, 4);

      // Export: the ledger replayed onto the base checkpoint.
      const x = await dpzo("export", "--run", run, "--out", `${dir}/export`);
      assert.equal(x.code, 0, x.stderr);
      assert.match(
        x.stdout + x.stderr,
        new RegExp(`final_weights_sha256: ${s.final_weights_sha256}`),
      );

      // Resume after step 1 (the ledger as a crash would leave it): the same weights and ledger.
      const resumed = `${dir}/resumed`;
      await Deno.mkdir(resumed);
      for (const f of ["run.json", "metrics.jsonl"]) {
        await Deno.copyFile(`${run}/${f}`, `${resumed}/${f}`);
      }
      const lines = (await Deno.readTextFile(`${run}/ledger.jsonl`)).split("\n");
      await Deno.writeTextFile(`${resumed}/ledger.jsonl`, lines[0] + "\n");
      const r = await dpzo("train", "--resume", resumed, "--quiet");
      assert.equal(r.code, 0, r.stderr);
      assert.equal(
        readJson(`${resumed}/summary.json`).final_weights_sha256,
        s.final_weights_sha256,
      );
      assert.deepEqual(await ledgerOf(resumed), ledger);

      // Two stages over the launcher's own nats-server.
      const l = await dpzo("launch", ...k4, "--stages", "2", "--set", `run_dir=${dir}/k2`);
      assert.equal(l.code, 0, l.stderr);
      const k2 = readJson(`${dir}/k2/summary.json`);
      assert.equal(k2.final_weights_sha256, s.final_weights_sha256);
      assert.deepEqual(await ledgerOf(`${dir}/k2`), ledger);
      // Parameter sync grows with K (K - 1 more seeds, coefficients, flips and nexts), not
      // with the model: a few hundred bytes per step and worker.
      assert.ok(
        k2.param_sync_bytes_per_step_per_worker > 200 &&
          k2.param_sync_bytes_per_step_per_worker < 1000,
        `${k2.param_sync_bytes_per_step_per_worker}`,
      );

      // Epsilon: the ledger's accounting, dpzo privacy for K = 1 and for K = 4 agree.
      const ask = (directions: string) =>
        runPrivacy(parsePrivacyFlags({
          samplingRate: String(s.sampling_rate),
          steps: "3",
          delta: String(s.delta),
          sigma: "1",
          mechanism: "gaussian",
          accountant: "pld",
          directions,
        })).json.epsilon;
      assert.equal(ask("1"), s.epsilon);
      assert.equal(ask("4"), s.epsilon);
      assert.match(t.stdout, /4 directions per step \(each step one Gaussian release/);
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "bfloat16 weights with K=2: the run and its export end with one hash",
  ignore: missing(TINY) || missing(`${DATA}/sst2`),
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "dpzo-directions-half-" });
    try {
      const cfg = [...common, "--set", "train.steps=2", "--set", "train.directions=2"];
      const t = await dpzo("train", ...cfg, "--set", "dtype=bfloat16", "--set", `run_dir=${dir}/r`);
      assert.equal(t.code, 0, t.stderr);
      const sha = readJson(`${dir}/r/summary.json`).final_weights_sha256;
      const x = await dpzo("export", "--run", `${dir}/r`, "--out", `${dir}/x`);
      assert.equal(x.code, 0, x.stderr);
      assert.match(x.stdout + x.stderr, new RegExp(`final_weights_sha256: ${sha}`));
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
