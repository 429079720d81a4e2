/**
 * The run report: one self-contained HTML page (inline CSS and inline SVG; no script, no font,
 * no image from anywhere), so it opens offline and can be mailed or archived as one file.
 */
import { stringify as toYaml } from "yaml";
import {
  privacyCaveats,
  privacyStatement,
  runPlanParams,
  runPrivacyCaveats,
  runPrivacyStatement,
} from "./privacy_statement.ts";
import type { RunData } from "./run_data.ts";
import type { Chart } from "./charts.ts";
import { CLIP_HIGH, CLIP_LOW } from "./warnings.ts";
import { PRIVATE_NOTE } from "../checkpoint/release.ts";

export function escapeHtml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(
    /"/g,
    "&quot;",
  );
}

export const CSS = `
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
  color: #222; background: #fafafa; }
main { max-width: 1200px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 1.4em; margin: 0.4em 0; } h2 { font-size: 1.1em; margin: 1.4em 0 0.5em; }
.statement { font-size: 1.05em; background: #eef5ff; border-left: 4px solid #3b73b9;
  padding: 10px 14px; }
.notprivate { background: #fff0f0; border-left-color: #c33; }
.warn { background: #fff7e0; border-left: 4px solid #e0a000; padding: 8px 14px; margin: 6px 0; }
.error { background: #fff0f0; border-left: 4px solid #c33; padding: 8px 14px; margin: 6px 0; }
.grid { display: flex; flex-wrap: wrap; gap: 16px; }
figure { background: #fff; border: 1px solid #ddd; margin: 0; padding: 10px; width: 560px; }
figure h3 { font-size: 0.95em; margin: 0 0 6px; }
figcaption { font-size: 0.8em; color: #555; margin-top: 4px; }
figure svg { max-width: 100%; height: auto; }
table { border-collapse: collapse; font-size: 0.9em; background: #fff; }
td, th { border: 1px solid #ddd; padding: 3px 10px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; font-weight: 600; }
pre { background: #fff; border: 1px solid #ddd; padding: 10px; font-size: 0.85em;
  overflow-x: auto; }
.muted { color: #777; font-size: 0.85em; }
.private { background: #fff0f0; border: 2px solid #c33; padding: 8px 14px; font-weight: 600; }
`;

export function table(rows: [string, string][]): string {
  return `<table>${
    rows.map(([k, v]) => `<tr><th>${escapeHtml(k)}</th><td>${escapeHtml(v)}</td></tr>`).join("")
  }</table>`;
}

const fmt = (v: unknown, digits = 4): string =>
  typeof v === "number" && Number.isFinite(v) ? String(Number(v.toPrecision(digits))) : "-";
const pct = (v: unknown): string =>
  typeof v === "number" && Number.isFinite(v) ? `${(v * 100).toFixed(1)}%` : "-";
const mean = (a: number[]) => (a.length ? a.reduce((x, y) => x + y, 0) / a.length : NaN);

/** The privacy statement of the run: the same sentence as `dpzo privacy` for its parameters. */
export function reportPrivacyStatement(
  d: RunData,
): { text: string; private: boolean; caveats: string[] } {
  if (d.summary) {
    return {
      text: runPrivacyStatement(d.summary),
      private: d.summary.private === true,
      caveats: runPrivacyCaveats(d.summary),
    };
  }
  const plan = d.run.privacy_plan;
  if (!plan) return { text: runPrivacyStatement({ ...NONE }), private: false, caveats: [] };
  const released = d.ledger.length; // epsilon counts ledger entries, not metrics lines
  const p = runPlanParams(d.run, released);
  return {
    text: `so far (the run has not finished): ${privacyStatement(p)}`,
    private: d.run.config?.insecure_seed === null,
    caveats: privacyCaveats(p),
  };
}

/** The charts as figures with their titles and captions. */
export function figuresHtml(charts: Chart[]): string {
  return charts.map((c) =>
    `<figure id="chart-${c.id}"><h3>${escapeHtml(c.title)}</h3>${c.svg}<figcaption>${
      escapeHtml(c.caption)
    }</figcaption></figure>`
  ).join("\n");
}

/** What the guarantee does not cover, under the statement. */
export function caveatList(caveats: string[]): string {
  return caveats.length
    ? `<ul id="privacy-caveats">${
      caveats.map((c) => `<li>Not covered: ${escapeHtml(c)}</li>`).join("")
    }</ul>`
    : "";
}

const NONE = {
  epsilon: null,
  delta: null,
  mechanism: "none",
  accountant: null,
  sampling_rate: 0,
  steps: 0,
};

/** Warnings worth showing, including the ones the run could only know at the end. */
export function reportWarnings(d: RunData): string[] {
  const out = d.warnings.map((w) => `step ${w.step}: ${w.message}`);
  const plan = d.run.privacy_plan, cfg = d.run.config;
  if (plan && cfg && plan.steps < cfg.train.steps) {
    out.push(
      `the configured ${cfg.train.steps} steps would exceed the target epsilon ${plan.target_epsilon}; ` +
        `the run stopped after ${plan.steps} steps. Raise the noise (privacy.sigma) or lower ` +
        `train.steps.`,
    );
  }
  if (plan && d.steps.length && !d.warnings.some((w) => w.kind.startsWith("clip"))) {
    // Whole-run check, for runs shorter than the rolling window.
    let c = 0, n = 0;
    for (const s of d.steps) {
      c += s.clipped_fraction * s.batch_size;
      n += s.batch_size;
    }
    const f = n ? c / n : NaN;
    if (f > CLIP_HIGH) {
      out.push(`${pct(f)} of per-example gradients were clipped: raise privacy.clip.`);
    }
    if (f < CLIP_LOW) {
      out.push(`${pct(f)} of per-example gradients were clipped: lower privacy.clip.`);
    }
  }
  return out;
}

export function reportHtml(d: RunData, charts: Chart[], generated = new Date()): string {
  const cfg = d.run.config ?? {};
  const s = d.summary;
  const priv = reportPrivacyStatement(d);
  const status = s?.interrupted
    ? `interrupted at step ${s.interrupted.step} of ${s.interrupted.of} (Ctrl-C or SIGTERM); ` +
      `resume it to finish (dpzo train --resume, or launch --resume for a sharded run)`
    : s
    ? "finished"
    : d.error
    ? "stopped"
    : `in progress or interrupted (${d.ledger.length} steps in the ledger so far)`;
  const warnings = reportWarnings(d);
  const stepTimes = d.steps.map((x) => x.step_s).filter(Number.isFinite);
  const split = (k: "forward_s" | "perturb_s" | "wait_s") =>
    mean(d.steps.map((x) => x[k]).filter((v): v is number => typeof v === "number"));
  const lastVal = [...d.evals].reverse().find((e) => e.split === "val");
  const results: [string, string][] = [
    ["status", status],
    ["steps (ledger)", `${d.ledger.length}${s ? ` of ${s.interrupted?.of ?? s.steps}` : ""}`],
    ["val accuracy", pct(s ? s.final.val_accuracy : lastVal?.accuracy)],
    ["test accuracy", pct(s?.final.test_accuracy)],
    ["val loss", fmt(s ? s.final.val_loss : lastVal?.loss)],
    [
      "train loss (first / last window)",
      `${fmt(s?.train_loss_first)} / ${fmt(s?.train_loss_last)}`,
    ],
    ["final_weights_sha256", s?.final_weights_sha256 ?? "-"],
  ];
  const host = s?.host ?? {};
  const hardware: [string, string][] = [
    ["backend", s?.backend_description ?? s?.backend ?? cfg.backend ?? "-"],
    ["cpu", host.cpu ? `${host.cpu} (${host.cores} cores)` : "-"],
    ["memory", host.memory_gib ? `${host.memory_gib} GiB` : "-"],
    ["os", host.os ?? "-"],
    ["runtime", host.runtime ?? "-"],
    ["hostname", host.hostname ?? "-"],
    ["wall time", s ? `${fmt(s.wall_s, 4)} s` : "-"],
    ["mean step time", `${fmt(mean(stepTimes))} s (${fmt(1 / mean(stepTimes), 3)} steps/s)`],
    [
      "  of which forward / perturbation / waiting",
      `${fmt(split("forward_s"), 3)} / ${fmt(split("perturb_s"), 3)} / ${
        fmt(split("wait_s"), 3)
      } s`,
    ],
    [
      "parameter sync per step per worker",
      s ? `${fmt(s.param_sync_bytes_per_step_per_worker, 4)} bytes` : "-",
    ],
    ["created", d.run.created ?? "-"],
  ];
  const figures = figuresHtml(charts);
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>dpzo report: ${escapeHtml(d.dir)}</title>
<style>${CSS}</style>
</head>
<body>
<main>
<p class="private" id="private-diagnostics">Private diagnostics: the losses, batch sizes, clipped
fractions and timings of this report are ${escapeHtml(PRIVATE_NOTE)}.
<code>dpzo report --public</code> renders a report from released values only, fit to publish.</p>
<h1>dpzo run report</h1>
<p class="muted">${escapeHtml(d.dir)} — ${escapeHtml(String(cfg.model ?? ""))} — generated ${
    escapeHtml(generated.toISOString())
  }</p>
<h2>Privacy</h2>
<p class="statement${priv.private ? "" : " notprivate"}" id="privacy-statement">${
    escapeHtml(priv.text)
  }</p>
${caveatList(priv.caveats)}
${d.error ? `<div class="error" id="run-error">The run stopped: ${escapeHtml(d.error)}</div>` : ""}
${
    warnings.length
      ? `<h2>Warnings</h2>\n${
        warnings.map((w) => `<div class="warn">${escapeHtml(w)}</div>`).join("\n")
      }`
      : ""
  }
<h2>Results</h2>
${table(results)}
<h2>Plots</h2>
<div class="grid">
${figures}
</div>
<h2>Hardware and timings</h2>
${table(hardware)}
<h2>Configuration</h2>
<pre id="config">${escapeHtml(toYaml(cfg))}</pre>
<p class="muted">Base model sha256 ${escapeHtml(d.run.base_model?.sha256 ?? "-")}; z spec v${
    escapeHtml(String(d.run.z_spec_version ?? "-"))
  }; plots rendered with Vega-Lite to static SVG.</p>
</main>
</body>
</html>
`;
}
