/**
 * Accounting from the ledger on resume: a resumed run keeps the noise, q and step count its
 * ledger was made with (run.json's recorded plan, never recalibrated), refuses a run.json that
 * changed them, and ends with the epsilon `dpzo privacy` gives for the ledger's steps (and, with
 * insecure_seed, the weights of the uninterrupted run). A ledger written before format 2 still
 * exports; resuming it is refused with a line naming the fix.
 */
import { strict as assert } from "node:assert";
import { encodeLedgerLine, readLedger } from "../src/checkpoint/ledger.ts";
import { readRunJson } from "../cluster/run.ts";
import { checkLedgerPlan, resumePrivacyPlan } from "../cluster/privacy_plan.ts";
import { parsePrivacyFlags, runPrivacy } from "../cluster/cli/privacy.ts";
import { DATA, dpzo, FIXTURES, missing, readJson } from "./fixtures.ts";

const needs = missing(`${FIXTURES}/tiny-opt`) || missing(`${DATA}/sst2`);

async function copyDir(from: string, to: string) {
  await Deno.mkdir(to, { recursive: true });
  for await (const e of Deno.readDir(from)) {
    if (e.isFile) await Deno.copyFile(`${from}/${e.name}`, `${to}/${e.name}`);
  }
}

/** The run as if its coordinator died after step `k`: the ledger's first k lines, no summary. */
async function crashedAfter(from: string, to: string, k: number) {
  await copyDir(from, to);
  const lines = (await Deno.readTextFile(`${from}/ledger.jsonl`)).split("\n").slice(0, k);
  await Deno.writeTextFile(`${to}/ledger.jsonl`, lines.join("\n") + "\n");
  await Deno.remove(`${to}/summary.json`);
}

// deno-lint-ignore no-explicit-any
async function editRunJson(dir: string, edit: (r: any) => void) {
  const r = readJson(`${dir}/run.json`);
  edit(r);
  await Deno.writeTextFile(`${dir}/run.json`, JSON.stringify(r, null, 2));
}

Deno.test({
  name:
    "resume refuses a changed sigma or batch size; its epsilon is dpzo privacy's for the ledger",
  ignore: needs,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    const full = `${dir}/full`;
    const t = await dpzo(
      "train",
      "--config",
      "configs/tiny-sst2.yaml",
      "--quiet",
      ...[
        `run_dir=${full}`,
        "insecure_seed=3",
        "train.steps=8",
        "train.eval_every=0",
        "task.val_examples=4",
        "task.test_examples=4",
      ].flatMap((s) => ["--set", s]),
    );
    assert.equal(t.code, 0, t.stderr);
    const done = readJson(`${full}/summary.json`);
    const run = `${dir}/crashed`;
    await crashedAfter(full, run, 3);
    const original = await Deno.readTextFile(`${run}/run.json`);
    const sigma = readJson(`${run}/run.json`).privacy_plan.noiseMultiplier;

    const refused = async (pattern: RegExp) => {
      const r = await dpzo("train", "--resume", run, "--quiet");
      assert.equal(r.code, 1, r.stdout);
      assert.match(r.stderr, pattern);
      assert.equal((await Deno.readTextFile(`${run}/ledger.jsonl`)).trim().split("\n").length, 3);
      await Deno.writeTextFile(`${run}/run.json`, original);
    };
    await editRunJson(run, (r) => (r.config.privacy.sigma = sigma * 2));
    await refused(
      new RegExp(`privacy\\.sigma is ${sigma * 2} but the run's ledger was made with ${sigma}`),
    );
    await editRunJson(run, (r) => (r.config.train.batch_size = 32));
    await refused(/train\.batch_size is 32 but the run's ledger was made with 16/);
    // A plan edited to agree with the config still disagrees with the ledger's steps.
    await editRunJson(run, (r) => {
      r.config.privacy.sigma = 2.5;
      r.config.privacy.target_epsilon = null;
      r.privacy_plan = { ...r.privacy_plan, noiseMultiplier: 2.5, gridUnits: 1638 };
      r.privacy_plan.target_epsilon = null;
    });
    const edited = await readRunJson(run);
    const plan = resumePrivacyPlan(edited.config, edited.privacyPlan, "run.json");
    const entries = await readLedger(`${run}/ledger.jsonl`);
    assert.throws(
      () => checkLedgerPlan(entries, plan, 1, "ledger.jsonl"),
      new RegExp(`ledger\\.jsonl:1: step 1 was run with sigma = ${sigma}`),
    );
    await Deno.writeTextFile(`${run}/run.json`, original);

    const r = await dpzo("train", "--resume", run, "--quiet");
    assert.equal(r.code, 0, r.stderr);
    const s = readJson(`${run}/summary.json`);
    assert.equal(s.steps, 8);
    assert.equal((await Deno.readTextFile(`${run}/ledger.jsonl`)).trim().split("\n").length, 8);
    // `dpzo privacy --sampling-rate 0.016 --steps 8 --delta 1e-5 --sigma S`, in this process
    const p = runPrivacy(parsePrivacyFlags({
      samplingRate: "0.016",
      steps: "8",
      delta: "1e-5",
      sigma: String(sigma),
      mechanism: "gaussian",
      accountant: "pld",
    }));
    assert.equal(s.epsilon, p.json.epsilon);
    assert.ok(r.stdout.includes(`privacy: ${p.text} — NOT PRIVATE: insecure_seed`), r.stdout);
    assert.equal(s.epsilon, done.epsilon);
    assert.equal(s.final_weights_sha256, done.final_weights_sha256);

    // The same run as dpzo wrote it before ledger format 2: a wall-clock time, no grid.
    const old = `${dir}/old`;
    await crashedAfter(full, old, 8);
    const lines = (await Deno.readTextFile(`${old}/ledger.jsonl`)).trim().split("\n").map((l) => {
      const { check: _c, clip: _a, grid_units: _g, sum_units: _s, ...rest } = JSON.parse(l);
      const { expected_batch: _e, unit: _u, ...old } = rest;
      return encodeLedgerLine({ ...old, time: "2026-11-28T00:00:00.000Z" });
    });
    await Deno.writeTextFile(`${old}/ledger.jsonl`, lines.join(""));
    const e = await dpzo("export", "--run", old, "--out", `${dir}/out`);
    assert.equal(e.code, 0, e.stderr);
    assert.match(e.stdout, new RegExp(`final_weights_sha256: ${done.final_weights_sha256}`));
    assert.match(e.stderr, /written before ledger format 2.*floating point/);
    assert.doesNotMatch(await Deno.readTextFile(`${dir}/out/ledger.jsonl`), /time/);
    assert.match(
      readJson(`${dir}/out/release.json`).warning,
      /NOT PRIVATE: insecure_seed.*before ledger format 2/,
    );
    const o = await dpzo("train", "--resume", old, "--quiet");
    assert.equal(o.code, 1);
    assert.match(
      o.stderr,
      /ledger\.jsonl:1: it was written by a dpzo before ledger format 2 .* cannot be resumed: start a new run/,
    );
    await Deno.remove(dir, { recursive: true });
  },
});
