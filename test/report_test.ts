/**
 * The run report (issue 8): the tiny run writes report.html; headless Chromium (Debian's
 * `chromium`) opens it offline and finds every plot rendered (SVG paths with a visible box), no
 * console error and no request leaving the file; its privacy statement is the sentence
 * `dpzo privacy` prints for the same parameters (and `dpzo train` prints); `dpzo report --png`
 * saves a screenshot. Also: the live progress figures and the plain (non-TTY) progress lines.
 */
import { strict as assert } from "node:assert";
import { DATA, dpzo, FIXTURES, missing, readJson } from "./fixtures.ts";
import { LiveFigures } from "../src/report/live.ts";
import { Progress } from "../cluster/progress.ts";
import { CHROMIUM } from "../src/report/screenshot.ts";

const needs = missing(`${FIXTURES}/tiny-opt`) || missing(`${DATA}/sst2`);

Deno.test({
  name: "the tiny run's report renders its plots in headless Chromium, offline, without errors",
  ignore: needs || missing(CHROMIUM),
  fn: async () => {
    const { openInChromium } = await import("../src/report/browser.ts");
    const dir = await Deno.makeTempDir();
    const run = `${dir}/run`;
    const t = await dpzo(
      "train",
      "--config",
      "configs/tiny-sst2.yaml",
      "--quiet",
      ...["train.steps=20", "train.eval_every=10", "task.val_examples=16", "task.test_examples=16"]
        .flatMap((s) => ["--set", s]),
      "--set",
      `run_dir=${run}`,
    );
    assert.equal(t.code, 0, t.stderr);
    assert.match(t.stderr, new RegExp(`report: ${run}/report.html`));

    // Per-step metrics the report plots.
    const steps = (await Deno.readTextFile(`${run}/metrics.jsonl`)).trim().split("\n")
      .map((l) => JSON.parse(l)).filter((m) => m.event === undefined);
    assert.equal(steps.length, 20);
    for (const k of ["loss_plus", "loss_minus", "clipped_fraction", "ghat", "noise_std"]) {
      assert.ok(steps.every((s) => typeof s[k] === "number"), `metrics lack ${k}`);
    }
    for (const s of steps) {
      const sum = s.forward_s + s.perturb_s + s.wait_s;
      assert.ok(Math.abs(sum - s.step_s) < 1e-3, `split ${sum} != step ${s.step_s}`);
    }
    assert.ok(steps.some((s) => typeof s.epsilon === "number"));

    // The page: self-contained (no script, nothing fetched), every plot drawn.
    const html = await Deno.readTextFile(`${run}/report.html`);
    const external = html.match(
      /<script|<link|@import|url\(\s*['"]?(https?:|\/\/)|(src|href)="(https?:|\/\/)/i,
    );
    assert.equal(external, null, "the page must not load anything");
    // A private diagnostic, and it says so at its top.
    assert.ok(
      html.indexOf('id="private-diagnostics"') < html.indexOf("<h1>"),
      "the private banner comes first",
    );
    const page = await openInChromium(`${run}/report.html`, `${dir}/shot.png`);
    assert.deepEqual(page.errors, []);
    assert.deepEqual(page.requests, []);
    const ids = page.charts.map((c) => c.id);
    for (const id of ["loss", "accuracy", "epsilon", "clipping", "ghat", "time"]) {
      assert.ok(ids.includes(`chart-${id}`), `no ${id} chart in ${ids}`);
    }
    for (const c of page.charts) {
      assert.ok(c.paths >= 3, `${c.id}: ${c.paths} rendered paths`);
      assert.ok(c.width > 300 && c.height > 100, `${c.id}: ${c.width}x${c.height}`);
    }
    const png = await Deno.readFile(`${dir}/shot.png`);
    assert.deepEqual([...png.slice(1, 4)], [0x50, 0x4e, 0x47]); // "PNG"

    // One privacy sentence: the report's = `dpzo privacy` for the same parameters = train's.
    const s = readJson(`${run}/summary.json`);
    const p = await dpzo(
      "privacy",
      "--sampling-rate",
      String(s.sampling_rate),
      "--steps",
      String(s.steps),
      "--delta",
      String(s.delta),
      "--sigma",
      String(s.sigma),
      "--accountant",
      s.accountant,
    );
    assert.equal(p.code, 0, p.stderr);
    const sentence = p.stdout.trim();
    assert.match(sentence, /^\([0-9.]+, 1e-5\)-DP for add\/remove of one training example over 20/);
    assert.equal(page.privacyStatement, sentence);
    assert.ok(t.stdout.includes(`privacy: ${sentence}\n`), t.stdout);

    // The documented one-command screenshot.
    const r = await dpzo(
      "report",
      "--run",
      run,
      "--out",
      `${dir}/again.html`,
      "--png",
      `${dir}/r.png`,
    );
    assert.equal(r.code, 0, r.stderr);
    assert.ok((await Deno.stat(`${dir}/r.png`)).size > 10_000);
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test("dpzo report on a directory without a run names the flag", async () => {
  const dir = await Deno.makeTempDir();
  const r = await dpzo("report", "--run", dir);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /--run: .* holds no run\.json/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("live figures, and plain progress lines when stderr is not a terminal", () => {
  const live = new LiveFigures({ private: true, window: 4 });
  for (let i = 1; i <= 6; i++) {
    live.step({
      step: i,
      batch_size: 16,
      loss_plus: 0.7,
      loss_minus: 0.6,
      ghat: -0.02,
      clipped_fraction: 0.25,
      noise_std: 0.01,
      forward_s: 0.08,
      perturb_s: 0.01,
      wait_s: 0.01,
    }, i === 5 ? 1.5 : undefined);
  }
  live.eval(0.625);
  const f = live.figures();
  assert.deepEqual(f, {
    loss: "0.6500",
    acc: "62.5%",
    eps: "1.500",
    clip: "25%",
    "|ghat|": "0.02 (noise 0.01)",
    "fwd/pert/wait": "80/10/10%",
  });
  const lines: string[] = [];
  const progress = new Progress(6, { log: (l) => lines.push(l) });
  progress.update(6, f);
  assert.equal(lines.length, 1);
  assert.match(lines[0], /^step 6\/6 loss 0\.6500 acc 62\.5% eps 1\.500 clip 25% \|ghat\| 0\.02/);
  assert.ok(!lines[0].includes("\r") && !lines[0].includes("\u001b"), "no terminal codes");
});
