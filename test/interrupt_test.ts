/**
 * Ctrl-C during `dpzo train`: SIGINT 10 s into a run prints, within 5 s, where it stopped and how
 * to continue; the run directory holds a summary marked interrupted and the report; `train
 * --resume` then ends with the same weights, ledger and epsilon as an uninterrupted run with the
 * same `insecure_seed`, and a summary of the whole run (steps, time, traffic per step).
 */
import { strict as assert } from "node:assert";
import { DPZO_RUNTIME_FLAGS } from "../cluster/launcher.ts";
import {
  DATA,
  dpzo,
  FIXTURES,
  ledgerLines,
  ledgerOf,
  missing,
  readJson,
  ROOT,
} from "./fixtures.ts";

const needs = missing(`${FIXTURES}/tiny-opt`) || missing(`${DATA}/sst2`);
const STEPS = 80;
const sets = (run: string) =>
  [
    `run_dir=${run}`,
    `train.steps=${STEPS}`,
    "train.eval_every=0",
    "task.val_examples=16",
    "task.test_examples=16",
    "insecure_seed=7",
  ].flatMap((s) => ["--set", s]);

Deno.test({
  name: "SIGINT: the resume line within 5 s, an interrupted summary; --resume equals a whole run",
  ignore: needs,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "dpzo-interrupt-" });
    try {
      // The uninterrupted run, alongside (the machine has two cores).
      const whole = dpzo(
        "train",
        "--config",
        "configs/tiny-sst2.yaml",
        "--quiet",
        ...sets(`${dir}/whole`),
      );

      const run = `${dir}/run`;
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          ...DPZO_RUNTIME_FLAGS,
          "cluster/main.ts",
          "train",
          "--config",
          "configs/tiny-sst2.yaml",
          "--quiet",
          ...sets(run),
        ],
        cwd: ROOT,
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      let stdout = "";
      let lineAt = 0;
      const reading = (async () => {
        const dec = new TextDecoder();
        for await (const chunk of child.stdout) {
          stdout += dec.decode(chunk);
          if (!lineAt && /interrupted at step/.test(stdout)) lineAt = performance.now();
        }
      })();
      const stderr = new Response(child.stderr).text();
      // 10 s into the run (sooner if half of it is done: it must still be running).
      const started = performance.now();
      while (performance.now() - started < 10_000 && (await ledgerLines(run)) < STEPS / 2) {
        await new Promise((r) => setTimeout(r, 100));
      }
      const sentAt = performance.now();
      child.kill("SIGINT");
      const status = await child.status;
      await reading;
      const err = await stderr;
      assert.equal(status.code, 130, err);
      const m =
        /^interrupted at step (\d+) of (\d+) \(epsilon so far ([0-9.e-]+)\); continue with: dpzo train --resume (.+)$/m
          .exec(stdout);
      assert.ok(m, stdout + err);
      assert.ok(lineAt - sentAt < 5000, `the line came ${(lineAt - sentAt) / 1000} s after SIGINT`);
      const [step, of] = [Number(m[1]), Number(m[2])];
      assert.equal(of, STEPS);
      assert.ok(step < STEPS, `interrupted at step ${step}: the run had finished`);
      assert.equal(m[4], run);
      assert.equal(await ledgerLines(run), step, "the ledger holds exactly the released steps");
      const cut = readJson(`${run}/summary.json`);
      assert.deepEqual(cut.interrupted, { step, of: STEPS });
      assert.equal(cut.steps, step);
      assert.equal(cut.epsilon === 0 ? "0" : String(Number(cut.epsilon.toPrecision(4))), m[3]);
      assert.equal(cut.final_weights_sha256, null);
      await Deno.stat(`${run}/report.html`);

      const r = await dpzo("train", "--resume", run, "--quiet");
      assert.equal(r.code, 0, r.stderr);
      const w = await whole;
      assert.equal(w.code, 0, w.stderr);
      const a = readJson(`${run}/summary.json`), b = readJson(`${dir}/whole/summary.json`);
      assert.equal(a.final_weights_sha256, b.final_weights_sha256);
      assert.match(r.stdout, new RegExp(`final_weights_sha256: ${b.final_weights_sha256}`));
      assert.deepEqual(await ledgerOf(run), await ledgerOf(`${dir}/whole`));
      assert.equal(a.epsilon, b.epsilon);
      // The whole run: every step, both segments' time, traffic per step as one run's.
      assert.equal(a.steps, STEPS);
      assert.equal(a.interrupted, undefined);
      assert.ok(a.wall_s > cut.wall_s, `wall_s ${a.wall_s} covers the first ${cut.wall_s} s`);
      const near = (x: number, y: number, what: string) =>
        assert.ok(Math.abs(x - y) <= 0.05 * y, `${what}: ${x} vs uninterrupted ${y}`);
      near(a.param_sync_bytes_per_step_per_worker, b.param_sync_bytes_per_step_per_worker, "sync");
      near(a.activation_bytes_per_step, b.activation_bytes_per_step, "activations");
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
