/**
 * Faults and the ledger, in one process (the in-process transport with injected faults):
 *
 * - a step interrupted before its ledger append (a worker "lost" in the minus pass) is aborted:
 *   nothing of it is in the ledger, no privacy is counted for it, and its retry (the same
 *   per-step randomness with insecure_seed) makes the run identical to an uninterrupted one;
 * - a step interrupted after its append (the update broadcast fails) is released: it is in the
 *   ledger once, completed from the ledger, never redrawn;
 * - `dpzo train --resume` on a corrupted ledger names the file and line and changes nothing.
 */
import { strict as assert } from "node:assert";
import { loadRunConfig } from "../src/dpzo/config.ts";
import type { LedgerEntry, LedgerSink } from "../src/checkpoint/ledger.ts";
import { stepRandomness } from "../src/dpzo/randomness.ts";
import { initBackend } from "../src/tensor/backend.ts";
import { train } from "../cluster/coordinator.ts";
import { RunInterrupted } from "../cluster/interruption.ts";
import { planPrivacy } from "../cluster/privacy_plan.ts";
import { loadModel, loadTask, resumeEmbedded, scheduleOf } from "../cluster/run.ts";
import { inProcessTransport } from "../cluster/transport/in_process.ts";
import { type Transport, TransportFault } from "../cluster/transport/transport.ts";
import { createStageWorker, sliceDigest, type StageWorker } from "../cluster/worker.ts";
import { disposeStage } from "../src/model/opt.ts";
import { DATA, FIXTURES, missing, ROOT } from "./fixtures.ts";

const skip = missing(`${FIXTURES}/tiny-opt`) || missing(`${DATA}/sst2`);
const sets = [
  "train.steps=6",
  "task.val_examples=4",
  "task.test_examples=4",
  "insecure_seed=5",
  "mode={type: full}",
  "train.eval_every=0",
];

/** The run's config, privacy plan, data and a model loader: made once, shared by the tests. */
let made: ReturnType<typeof makeSetup> | undefined;
function setup() {
  return made ??= makeSetup();
}

async function makeSetup() {
  const config = await loadRunConfig(`${ROOT}configs/tiny-sst2.yaml`, [
    ...sets,
    `model=${FIXTURES}/tiny-opt`,
    `task.data=${DATA}/sst2`,
    "run_dir=/nonexistent",
  ]);
  await initBackend(config.backend);
  const plan = planPrivacy(config, () => {});
  const data = await loadTask(config);
  const fresh = async (): Promise<StageWorker> => {
    const { stage, trainable } = await loadModel(config);
    return createStageWorker(stage, trainable);
  };
  return { config, plan, data, fresh, schedule: scheduleOf(config, plan) };
}

type Setup = Awaited<ReturnType<typeof setup>>;

/** Trains with `wrap` around the in-process transport; returns the ledger and the weights. */
async function run(s: Setup, wrap: (t: Transport) => Transport = (t) => t) {
  const pipeline = [[await s.fresh()]];
  const inner = inProcessTransport(pipeline, {
    rebuild: async () => {
      disposeStage(pipeline[0][0].stage);
      return await s.fresh();
    },
  });
  const appended: LedgerEntry[] = [];
  const sink: LedgerSink = {
    append: (e) => {
      appended.push(e);
      return Promise.resolve();
    },
    close: () => {},
  };
  const steps: number[] = [];
  const log: string[] = [];
  await train({
    transport: wrap(inner),
    schedule: s.schedule,
    train: s.data.train,
    val: s.data.val,
    padId: 1,
    rng: stepRandomness(s.config.insecure_seed),
    ledger: sink,
    log: (l) => log.push(l),
    hooks: { onStep: (m) => void steps.push(m.step) },
  });
  const digest = sliceDigest(pipeline[0][0]);
  disposeStage(pipeline[0][0].stage);
  return { appended, steps, digest, log };
}

const strip = (es: LedgerEntry[]) => es.map(({ time: _t, ...rest }) => rest);

Deno.test({
  name: "an aborted step is not in the ledger and spends nothing; a released one is in it once",
  ignore: skip,
  fn: async () => {
    const s = await setup();
    const reference = await run(s);
    assert.deepEqual(reference.appended.map((e) => e.step), [1, 2, 3, 4, 5, 6]);

    let abortedOnce = false, releasedOnce = false;
    const faulty = await run(s, (t) => ({
      ...t,
      groups: t.groups,
      recover: t.recover!.bind(t),
      broadcast: async (msg) => {
        await t.broadcast(msg);
        // Step 5: the update was applied (and the entry appended) but its broadcast "fails".
        if (msg.type === "step.update" && msg.step === 5 && !releasedOnce) {
          releasedOnce = true;
          throw new TransportFault("test: the update of step 5 was not acknowledged");
        }
      },
      forward: (g, req) => {
        // Step 3: a worker "dies" during the minus pass, before anything is released.
        if (req.step === 3 && req.sign === -1 && !abortedOnce) {
          abortedOnce = true;
          return Promise.reject(new TransportFault("test: worker lost in the minus pass"));
        }
        return t.forward(g, req);
      },
    }));
    assert.ok(abortedOnce && releasedOnce);
    // Each step appended exactly once, in order: the aborted attempt of step 3 left nothing.
    assert.deepEqual(faulty.appended.map((e) => e.step), [1, 2, 3, 4, 5, 6]);
    assert.deepEqual(strip(faulty.appended), strip(reference.appended));
    // The privacy spent is the ledger's: 6 released steps, as in the uninterrupted run.
    assert.equal(
      s.plan!.epsilonAt(faulty.appended.length).epsilon,
      s.plan!.epsilonAt(reference.appended.length).epsilon,
    );
    assert.ok(faulty.log.some((l) => /step 3 interrupted.*not released: aborted/.test(l)));
    assert.ok(faulty.log.some((l) => /step 5 interrupted.*it is in the ledger/.test(l)));
    assert.deepEqual(faulty.steps, [1, 2, 3, 4, 5, 6]);
    // Restored exactly (rebuild + replay, not subtraction): the same weights.
    assert.equal(faulty.digest, reference.digest);
  },
});

Deno.test({
  name: "Ctrl-C: a step not yet in the ledger is dropped, one in it completes",
  ignore: skip,
  fn: async () => {
    const s = await setup();
    /** Trains until `stop` fires (from inside `wrap`); returns what was appended and the error. */
    const until = async (wrap: (t: Transport, stop: AbortController) => Transport) => {
      const w = await s.fresh();
      const stop = new AbortController();
      const appended: LedgerEntry[] = [];
      const error = await train({
        transport: wrap(inProcessTransport([[w]]), stop),
        schedule: s.schedule,
        train: s.data.train,
        val: s.data.val,
        padId: 1,
        rng: stepRandomness(s.config.insecure_seed),
        ledger: {
          append: (e) => {
            appended.push(e);
            return Promise.resolve();
          },
          close: () => {},
        },
        log: () => {},
        stop: stop.signal,
      }).then(() => null, (e) => e);
      disposeStage(w.stage);
      return { appended, error };
    };
    // Ctrl-C during the minus pass of step 3: nothing of step 3 is released.
    const a = await until((t, stop) => ({
      ...t,
      groups: t.groups,
      forward: (g, req) => {
        if (req.step === 3 && req.sign === -1) stop.abort();
        return t.forward(g, req);
      },
    }));
    assert.ok(a.error instanceof RunInterrupted, String(a.error));
    assert.equal(a.error.step, 2);
    assert.match(a.error.message, /^interrupted at step 2 of 6/);
    assert.deepEqual(a.appended.map((e) => e.step), [1, 2]);
    // Ctrl-C while the update of step 4 goes out: step 4 is in the ledger, and counts.
    const b = await until((t, stop) => ({
      ...t,
      groups: t.groups,
      broadcast: (msg) => {
        if (msg.type === "step.update" && msg.step === 4) stop.abort();
        return t.broadcast(msg);
      },
    }));
    assert.ok(b.error instanceof RunInterrupted, String(b.error));
    assert.equal(b.error.step, 4);
    assert.deepEqual(b.appended.map((e) => e.step), [1, 2, 3, 4]);
  },
});

Deno.test({
  name: "train --resume on a corrupted ledger names the file and line and changes nothing",
  ignore: skip,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "dpzo-corrupt-" });
    try {
      const p = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          `${ROOT}cluster/main.ts`,
          "train",
          "--config",
          "configs/tiny-sst2.yaml",
          "--quiet",
          ...sets.flatMap((x) => ["--set", x]),
          "--set",
          "train.steps=3",
          "--set",
          `run_dir=${dir}/r`,
        ],
        cwd: ROOT,
        stdout: "piped",
        stderr: "piped",
      });
      const out = await p.output();
      assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
      const path = `${dir}/r/ledger.jsonl`;
      const lines = (await Deno.readTextFile(path)).split("\n");
      lines[1] = lines[1].replace(/"ghat":-?[0-9.e-]+/, '"ghat":0.5');
      const corrupted = lines.join("\n");
      await Deno.writeTextFile(path, corrupted);
      await assert.rejects(
        resumeEmbedded(`${dir}/r`, { quiet: true, log: () => {} }),
        /ledger\.jsonl:2: checksum mismatch/,
      );
      assert.equal(await Deno.readTextFile(path), corrupted);
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "export starts from the newest snapshot; a truncated snapshot is named, nothing changed",
  ignore: skip,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const { exportRun } = await import("../cluster/export.ts");
    const { readJson } = await import("./fixtures.ts");
    const dir = await Deno.makeTempDir({ prefix: "dpzo-snap-" });
    try {
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          `${ROOT}cluster/main.ts`,
          "train",
          "--config",
          "configs/tiny-sst2.yaml",
          "--quiet",
          ...sets.flatMap((x) => ["--set", x]),
          "--set",
          "train.steps=5",
          "--set",
          "train.snapshot_every=2",
          "--set",
          `run_dir=${dir}/r`,
        ],
        cwd: ROOT,
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
      const sha = readJson(`${dir}/r/summary.json`).final_weights_sha256;
      const logs: string[] = [];
      const r = await exportRun(`${dir}/r`, `${dir}/out`, (l) => logs.push(l));
      assert.equal(r.final_weights_sha256, sha);
      assert.ok(logs.some((l) => /snapshot of step 4/.test(l)), logs.join("\n"));

      const file = `${dir}/r/snapshots/step-00000004/stage-0.safetensors`;
      const bytes = await Deno.readFile(file);
      const truncated = bytes.subarray(0, bytes.length - 100);
      await Deno.writeFile(file, truncated);
      await assert.rejects(
        exportRun(`${dir}/r`, `${dir}/out2`, () => {}),
        /step-00000004\/stage-0\.safetensors: truncated or corrupt snapshot: \d+ bytes where/,
      );
      assert.deepEqual(await Deno.readFile(file), truncated);
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
