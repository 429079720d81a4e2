/**
 * The public report (`dpzo report --public`): one self-contained HTML page built from released
 * values only — run.json (the settings and the privacy plan) and ledger.jsonl (per step the
 * seed, the released ghat and its settings) — so it may be published with the model. It shows
 * the privacy statement, ghat per step against its noise level, epsilon spent (counted from the
 * ledger), and the settings. It reads no metrics.jsonl, no summary.json, nothing measured on the
 * training data: no loss, batch size, clipped fraction or timing.
 */
import { stringify as toYaml } from "yaml";
import { readLedgerSoFar } from "./run_data.ts";
import { type Chart, lineChart, renderSvg, rolling } from "./charts.ts";
import { caveatList, CSS, escapeHtml, figuresHtml, table } from "./html.ts";
import { privacyCaveats, privacyStatement, runPlanParams } from "./privacy_statement.ts";
import { entryPrivacy, type LedgerEntry } from "../checkpoint/ledger.ts";
import { ledgerEpsilon, type LedgerStepPrivacy } from "../privacy/mod.ts";
import {
  RELEASABLE_RUN_FILES,
  releaseWarning,
  writeReleaseManifest,
} from "../checkpoint/release.ts";

export const PUBLIC_REPORT_FILE = "report-public.html";

/** What the public page is made of: run.json and the ledger, nothing else. */
export interface PublicRun {
  dir: string;
  // deno-lint-ignore no-explicit-any
  run: any;
  ledger: LedgerEntry[];
}

export async function readPublicRun(dir: string): Promise<PublicRun> {
  let run;
  try {
    run = JSON.parse(await Deno.readTextFile(`${dir}/run.json`));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Error(`--run: ${dir} holds no run.json; give the run_dir of a dpzo train run`);
    }
    throw new Error(`${dir}/run.json: ${e instanceof Error ? e.message : e}`);
  }
  return { dir, run, ledger: await readLedgerSoFar(`${dir}/ledger.jsonl`) };
}

/** Epsilon after the first t entries, at up to `points` values of t (and the last). */
function epsilonCurve(ledger: LedgerEntry[], delta: number, accountant: string, points = 6) {
  const steps = ledger.map(entryPrivacy).filter((s): s is LedgerStepPrivacy => s !== null);
  const ts = new Set<number>();
  for (let i = 1; i <= points; i++) ts.add(Math.ceil((i * steps.length) / points));
  const name = accountant === "rdp" ? "rdp" : "pld";
  return [0, ...[...ts].filter((t) => t > 0)].map((t) => ({
    step: t,
    value: t === 0 ? 0 : ledgerEpsilon(steps.slice(0, t), delta, name, { bounds: false }).epsilon,
    series: "epsilon spent",
  }));
}

/** The page. */
export async function publicReportHtml(d: PublicRun, generated = new Date()): Promise<string> {
  const cfg = d.run.config ?? {};
  const plan = d.run.privacy_plan;
  const ledger = d.ledger;
  const released = ledger.length;
  let statement: string;
  let isPrivate = false;
  const caveats: string[] = [];
  if (plan) {
    const p = runPlanParams(d.run, released);
    statement = privacyStatement(p);
    isPrivate = cfg.insecure_seed === null || cfg.insecure_seed === undefined;
    if (!isPrivate) {
      statement += " — NOT PRIVATE: insecure_seed was set (sampling and noise are reproducible)";
    }
    caveats.push(...privacyCaveats(p));
    if (plan.unit === "example" && (cfg.task?.name === "squad" || cfg.task?.name === "drop")) {
      caveats.push(
        "Several training examples may ask about one passage: a passage is protected only as " +
          "a group of its examples (privacy.unit: context protects passages).",
      );
    }
  } else {
    statement = "none: a non-private run (privacy.enabled: false) gives no (epsilon, delta) " +
      "guarantee";
  }
  const charts: Chart[] = [];
  if (released) {
    const w = Math.max(1, Math.min(50, Math.round(released / 20)));
    const avg = rolling(ledger.map((e) => e.ghat), w);
    const rows = [
      ...ledger.map((e) => ({ step: e.step, value: e.ghat, series: "ghat (released)" })),
      ...ledger.map((e, i) => ({ step: e.step, value: avg[i], series: `${w}-step avg` })),
    ];
    const e0 = ledger[0];
    const noiseStd = e0.mechanism === "none" || !e0.clip || !e0.expected_batch
      ? NaN
      : (e0.mechanism === "gaussian" ? e0.sigma! : Math.SQRT2 * e0.b!) * e0.clip /
        e0.expected_batch;
    charts.push({
      id: "ghat",
      title: "Released ghat per step",
      caption: "The privatized projected gradient of each step, as the ledger records it, and " +
        "the standard deviation of its noise (sigma * C / expected batch): where the average " +
        "stays inside the noise band, the updates are mostly noise.",
      svg: await renderSvg(lineChart(rows, {
        y: "ghat",
        colors: { "ghat (released)": "#c6dbef", [`${w}-step avg`]: "#08519c" },
        rules: Number.isFinite(noiseStd)
          ? [
            { value: noiseStd, label: `+ noise std ${Number(noiseStd.toPrecision(3))}` },
            { value: -noiseStd, label: "- noise std" },
          ]
          : [],
      })),
    });
    if (plan) {
      const eps = epsilonCurve(ledger, plan.delta, plan.accountant);
      const target = plan.target_epsilon;
      charts.push({
        id: "epsilon",
        title: "Privacy budget spent",
        caption: "Epsilon at the run's delta after the first t ledger entries, by the run's " +
          "accountant, counted from the ledger.",
        svg: await renderSvg(lineChart(eps, {
          y: "epsilon",
          points: true,
          rules: typeof target === "number" ? [{ value: target, label: `target ${target}` }] : [],
        })),
      });
    }
  }
  const e0 = ledger[0];
  const settings: [string, string][] = [
    ["model", String(cfg.model ?? "-")],
    ["base checkpoint sha256", String(d.run.base_model?.sha256 ?? "-")],
    ["task", String(cfg.task?.name ?? "-")],
    ["steps released (ledger)", `${released}${plan ? ` of ${plan.steps} planned` : ""}`],
    ["sampling rate q", String(plan?.q ?? e0?.q ?? "-")],
    ["mechanism", plan ? `${plan.mechanism}, discrete on a grid of C/${plan.gridUnits}` : "none"],
    [plan?.mechanism === "laplace" ? "b" : "sigma", String(plan?.noiseMultiplier ?? "-")],
    ["clip C", String(cfg.privacy?.clip ?? "-")],
    ["delta", String(plan?.delta ?? "-")],
    ["privacy unit", String(plan?.unit ?? "-")],
    ["lr / phi", `${cfg.train?.lr ?? "-"} / ${cfg.train?.phi ?? "-"}`],
  ];
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>dpzo public report</title>
<style>${CSS}</style>
</head>
<body>
<main>
<h1>dpzo public report</h1>
<p class="muted" id="public-note">Built from released values only (run.json and ledger.jsonl:
the settings, the step seeds and the released ghat): fit to publish with the model. Generated
${escapeHtml(generated.toISOString())}.</p>
<h2>Privacy</h2>
<p class="statement${isPrivate ? "" : " notprivate"}" id="privacy-statement">${
    escapeHtml(statement)
  }</p>
${caveatList(caveats)}
<h2>Plots</h2>
<div class="grid">
${figuresHtml(charts)}
</div>
<h2>Settings</h2>
${table(settings)}
<h2>Configuration</h2>
<pre id="config">${escapeHtml(toYaml(cfg))}</pre>
</main>
</body>
</html>
`;
}

/** Writes the public report of `dir` (default RUN/report-public.html) and lists it as releasable. */
export async function writePublicReport(dir: string, out?: string): Promise<string> {
  const html = await publicReportHtml(await readPublicRun(dir));
  const path = out ?? `${dir}/${PUBLIC_REPORT_FILE}`;
  const tmp = `${path}.tmp-${Deno.pid}`;
  await Deno.writeTextFile(tmp, html);
  await Deno.rename(tmp, path);
  if (out === undefined) {
    const cfg = (await readPublicRun(dir)).run.config;
    await writeReleaseManifest(
      dir,
      [...RELEASABLE_RUN_FILES, PUBLIC_REPORT_FILE],
      cfg ? releaseWarning(cfg) : undefined,
    );
  }
  return path;
}
