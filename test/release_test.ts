/**
 * What a run releases (README, "What is released"), tried by an attacker.
 *
 * The attacker reads every file that a run (`release.json` of the run directory, after
 * `dpzo report --public`) or `dpzo export` marks releasable — JSON, JSONL, HTML text, the JSON
 * headers of safetensors files — and tries to recompute each step's noise and realised batch
 * size three ways:
 *   1. from per-step private figures (batch size and mean L+/L-: when nothing is clipped the
 *      noise is ghat q n - B (mean L+ - mean L-) / (2 phi), the attack of issue 19);
 *   2. from per-step wall-clock times (empty batches append faster);
 *   3. from a seed of the secret randomness (insecure_seed in run.json): replaying the step's
 *      stream gives its Poisson sample, its public seed (checked against the ledger) and the
 *      noise itself.
 * The same attacker succeeds on a run's private metrics.jsonl (1), and on an insecure_seed run
 * (3, whose files say NOT PRIVATE); on a private run's releasable files it recovers nothing.
 * Also: ledger lines carry no time, every released ghat is its integer sum on the grid, the
 * exported model is the ledger replayed, and the private files say so at their top.
 */
import { strict as assert } from "node:assert";
import { DATA, dpzo, FIXTURES, missing, readJson } from "./fixtures.ts";
import { insecureStepRandom } from "../src/dpzo/randomness.ts";
import { poissonSample, releasedGhat } from "../src/dpzo/mechanism.ts";
import { gridNoise } from "../src/dpzo/discrete_noise.ts";

const needs = missing(`${FIXTURES}/tiny-opt`) || missing(`${DATA}/sst2`);

type Rec = Record<string, unknown>;

/** The JSON objects in a text (a document, its nested objects, or JSON lines). */
function records(text: string): Rec[] {
  const out: Rec[] = [];
  const walk = (v: unknown) => {
    if (Array.isArray(v)) v.forEach(walk);
    else if (v && typeof v === "object") {
      out.push(v as Rec);
      Object.values(v).forEach(walk);
    }
  };
  const parse = (t: string) => {
    try {
      walk(JSON.parse(t));
      return true;
    } catch {
      return false;
    }
  };
  if (!parse(text)) text.split("\n").forEach(parse);
  return out;
}

/** What a file gives the attacker: its JSON records (safetensors: the header's). */
async function readFileForAttack(path: string): Promise<Rec[]> {
  const bytes = await Deno.readFile(path);
  if (path.endsWith(".safetensors")) {
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    return records(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  }
  const text = new TextDecoder().decode(bytes);
  // HTML: its text and any JSON embedded in it
  return path.endsWith(".html")
    ? [...text.matchAll(/\{[^<>]*\}/g)].flatMap((m) => records(m[0]))
    : records(text);
}

interface Recovered {
  noise: Map<number, number>;
  batch: Map<number, number>;
  how: string[];
}

/** The attacker: every strategy on the records of the files it was given. */
function attack(recs: Rec[]): Recovered {
  const r: Recovered = { noise: new Map(), batch: new Map(), how: [] };
  const ledger = recs.filter((x) => typeof x.seed === "string" && typeof x.ghat === "number");
  const byStep = new Map<number, Rec>();
  for (const x of recs) {
    if (typeof x.step !== "number") continue;
    byStep.set(x.step, { ...(byStep.get(x.step) ?? {}), ...x });
  }
  const steps = [...byStep.keys()].sort((a, b) => a - b);
  const varies = (k: string) => new Set(steps.map((s) => byStep.get(s)![k])).size > 1;
  const keys = [...new Set(steps.flatMap((s) => Object.keys(byStep.get(s)!)))];
  const pick = (re: RegExp) => keys.find((k) => re.test(k) && varies(k));
  const find = (k: string) => recs.find((x) => typeof x[k] === "number")?.[k] as number;
  const phi = find("phi"),
    qn = find("expected_batch") ??
      find("batch_size") /* the config's expected batch */;

  // 1. per-step private figures
  const bKey = pick(/(^|_)(batch|size|count|examples)(_|$)/i);
  const plus = pick(/loss.*(plus|\+)/i), minus = pick(/loss.*(minus|-)/i);
  if (bKey) {
    for (const s of steps) {
      const x = byStep.get(s)!;
      if (Number.isInteger(x[bKey])) r.batch.set(s, x[bKey] as number);
      if (plus && minus && typeof x.ghat === "number" && Number.isFinite(x[plus])) {
        const B = x[bKey] as number;
        const diff = ((x[plus] as number) - (x[minus] as number)) / (2 * phi);
        r.noise.set(s, (x.ghat as number) * qn - B * diff);
      }
    }
    r.how.push(`per-step fields ${bKey}, ${plus}, ${minus}`);
  }

  // 2. wall-clock times: the gap before each step, short for empty batches
  const tKey = pick(/(^|_)(time|date|timestamp|wall|elapsed|ms|sec|s)$/i);
  if (tKey) {
    const at = steps.map((s) => {
      const v = byStep.get(s)![tKey];
      return typeof v === "string" ? Date.parse(v) : Number(v);
    });
    const gaps = at.slice(1).map((t, i) => t - at[i]);
    const median = [...gaps].sort((a, b) => a - b)[Math.floor(gaps.length / 2)];
    gaps.forEach((g, i) => {
      if (!r.batch.has(steps[i + 1])) r.batch.set(steps[i + 1], g < median / 2 ? 0 : 1);
    });
    r.how.push(`times in ${tKey}`);
  }

  // 3. the secret randomness from a seed in the files
  const cfg = recs.find((x) => "insecure_seed" in x && "train" in x) as
    | { insecure_seed: number | null; task: { train_examples: number } }
    | undefined;
  if (cfg && cfg.insecure_seed !== null) {
    for (const e of ledger) {
      const step = e.step as number;
      const rng = insecureStepRandom(cfg.insecure_seed, step);
      const batch = poissonSample(cfg.task.train_examples, e.q as number, rng);
      if (rng.u64().toString() !== e.seed) continue; // not the stream this step drew from
      for (let i = 0; i < batch.length; i++) rng.uniform(); // the stochastic rounding
      const mechanism = e.mechanism as "gaussian" | "laplace";
      const noise = (mechanism === "gaussian" ? e.sigma : e.b) as number;
      const y = gridNoise(rng, mechanism, noise, e.grid_units as number);
      r.batch.set(step, batch.length);
      r.noise.set(step, y * ((e.clip as number) / (e.grid_units as number)));
    }
    r.how.push("insecure_seed");
  }
  return r;
}

async function train(run: string, steps: number, extra: string[]) {
  const r = await dpzo(
    "train",
    "--config",
    "configs/tiny-sst2.yaml",
    "--quiet",
    ...[
      `run_dir=${run}`,
      `train.steps=${steps}`,
      "train.eval_every=0",
      "task.val_examples=8",
      "task.test_examples=8",
      "privacy.clip=100", // nothing clipped: the exact attack applies to the metrics
      ...extra,
    ].flatMap((s) => ["--set", s]),
  );
  assert.equal(r.code, 0, r.stderr);
  return r;
}

/** The releasable files of a run (after `report --public`) and of its export. */
async function releasable(run: string, out: string): Promise<string[]> {
  const p = await dpzo("report", "--run", run, "--public");
  assert.equal(p.code, 0, p.stderr);
  const e = await dpzo("export", "--run", run, "--out", out);
  assert.equal(e.code, 0, e.stderr);
  const files: string[] = [];
  for (const dir of [run, out]) {
    const m = readJson(`${dir}/release.json`);
    for (const f of Object.keys(m.releasable)) files.push(`${dir}/${f}`);
  }
  return files;
}

/**
 * The records of the files, less those identical to the base checkpoint's (its tokenizer and
 * config: public before the run, they say nothing about it).
 */
async function recsOf(files: string[]): Promise<Rec[]> {
  const base = `${FIXTURES}/tiny-opt`;
  const fromRun: string[] = [];
  for (const f of files) {
    const name = f.split("/").pop()!;
    const same = await Deno.readFile(`${base}/${name}`).then(
      (b) => Deno.readFile(f).then((a) => a.length === b.length && a.every((x, i) => x === b[i])),
      () => false,
    );
    if (!same) fromRun.push(f);
  }
  return (await Promise.all(fromRun.map(readFileForAttack))).flat();
}

Deno.test({
  name: "an attacker with every releasable file recomputes no noise and no batch size",
  ignore: needs,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    const run = `${dir}/private`;
    const t = await train(run, 8, []);
    const files = await releasable(run, `${dir}/export`);
    assert.deepEqual(
      files.map((f) => f.slice(dir.length + 1)).sort(),
      [
        "export/SHA256SUMS",
        "export/adapter/adapter_config.json",
        "export/adapter/adapter_model.safetensors",
        "export/config.json",
        "export/generation_config.json",
        "export/ledger.jsonl",
        "export/merges.txt",
        "export/model.safetensors",
        "export/release.json",
        "export/special_tokens_map.json",
        "export/tokenizer_config.json",
        "export/vocab.json",
        "private/ledger.jsonl",
        "private/release.json",
        "private/report-public.html",
        "private/run.json",
      ],
    );
    const metrics = (await Deno.readTextFile(`${run}/metrics.jsonl`)).trim().split("\n")
      .map((l) => JSON.parse(l));
    const truth = new Map<number, number>(
      metrics.filter((m) => m.event === undefined).map((m) => [m.step, m.batch_size]),
    );
    assert.equal(truth.size, 8);

    // The attacker on the private metrics: the attack works there.
    const onPrivate = attack(records(await Deno.readTextFile(`${run}/metrics.jsonl`)));
    assert.equal(onPrivate.noise.size, 8, onPrivate.how.join("; "));
    for (const [s, b] of truth) assert.equal(onPrivate.batch.get(s), b);

    // The same attacker on everything marked releasable: nothing.
    const found = attack(await recsOf(files));
    assert.deepEqual(found.how, [], `the attacker found ${found.how}`);
    assert.equal(found.noise.size, 0);
    assert.equal(found.batch.size, 0);

    // The ledger: released values and public settings only, no time; ghat is its integer on
    // the grid (the float carries nothing else); the model is the ledger replayed.
    const allowed = [
      "step",
      "seed",
      "phi",
      "ghat",
      "lr",
      "update_coeff",
      "weight_decay",
      "q",
      "mechanism",
      "sigma",
      "clip",
      "grid_units",
      "sum_units",
      "expected_batch",
      "unit",
      "check",
    ];
    for (const path of [`${run}/ledger.jsonl`, `${dir}/export/ledger.jsonl`]) {
      const lines = (await Deno.readTextFile(path)).trim().split("\n").map((l) => JSON.parse(l));
      assert.equal(lines.length, 8);
      for (const e of lines) {
        assert.deepEqual(Object.keys(e).filter((k) => !allowed.includes(k)), [], path);
        assert.ok(Number.isInteger(e.sum_units));
        assert.equal(e.ghat, releasedGhat(e.sum_units, e.clip, e.grid_units, e.expected_batch));
      }
    }
    const summary = readJson(`${run}/summary.json`);
    const exported = await dpzo("export", "--run", run, "--out", `${dir}/again`);
    assert.match(exported.stdout, new RegExp(summary.final_weights_sha256));

    // The private files say so at their top.
    assert.match(metrics[0].private_diagnostics, /without noise/);
    assert.equal(Object.keys(summary)[1], "private_diagnostics");
    assert.ok(summary.private_diagnostics.fields.includes("train_loss_first"));
    const html = await Deno.readTextFile(`${run}/report.html`);
    assert.ok(html.indexOf("private-diagnostics") < html.indexOf("<h1>"));
    const log = t.stderr.split("\n");
    const first = log.findIndex((l) => /private diagnostics/.test(l));
    assert.ok(first >= 0 && first < log.findIndex((l) => /^step /.test(l)), t.stderr);
    // The public report holds the statement, but no private figure.
    const pub = await Deno.readTextFile(`${run}/report-public.html`);
    assert.match(pub, /DP for add\/remove of one training example over 8 steps/);
    assert.doesNotMatch(pub, /loss_plus|loss_minus|clipped_fraction|mean_abs_g|step_s|wall_s/);
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "with insecure_seed the same attacker recovers every noise and batch: it says NOT PRIVATE",
  ignore: needs,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    const run = `${dir}/insecure`;
    await train(run, 4, ["insecure_seed=7"]);
    const files = await releasable(run, `${dir}/export`);
    assert.match(readJson(`${run}/release.json`).warning, /NOT PRIVATE: insecure_seed/);
    assert.match(readJson(`${dir}/export/release.json`).warning, /NOT PRIVATE: insecure_seed/);
    const found = attack(await recsOf(files));
    assert.deepEqual(found.how, ["insecure_seed"]);
    const metrics = (await Deno.readTextFile(`${run}/metrics.jsonl`)).trim().split("\n")
      .map((l) => JSON.parse(l)).filter((m) => m.event === undefined);
    const ledger = (await Deno.readTextFile(`${run}/ledger.jsonl`)).trim().split("\n")
      .map((l) => JSON.parse(l));
    for (const m of metrics) {
      assert.equal(found.batch.get(m.step), m.batch_size, `step ${m.step}`);
      // the noiseless sum the attacker gets is the batch's (up to the grid's rounding)
      const e = ledger[m.step - 1];
      const grid = e.clip / e.grid_units;
      const sum = e.ghat * e.expected_batch - found.noise.get(m.step)!;
      const batchSum = m.batch_size * (m.loss_plus - m.loss_minus) / (2 * e.phi);
      assert.ok(Math.abs(sum - batchSum) <= m.batch_size * grid + 1e-6, `step ${m.step}`);
    }
    await Deno.remove(dir, { recursive: true });
  },
});
