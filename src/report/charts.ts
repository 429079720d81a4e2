/**
 * The report's plots as static SVG, rendered without a browser: Vega-Lite specs compiled to
 * Vega and drawn by `vega.View#toSVG()` (headless; no canvas, no DOM, no network). The page
 * that embeds them needs no script at all.
 */
import * as vega from "vega";
import * as vl from "vega-lite";
import type { EvalLine, RunData, StepLine } from "./run_data.ts";

export interface Chart {
  id: string;
  title: string;
  /** What to read in it, for the user. */
  caption: string;
  svg: string;
}

type Row = Record<string, number | string>;

const WIDTH = 520, HEIGHT = 190;
const AXIS_X = { field: "step", type: "quantitative", title: "step" } as const;

/** Compiles and renders one Vega-Lite spec to an SVG string. */
export async function renderSvg(spec: Record<string, unknown>): Promise<string> {
  const compiled = vl.compile({
    width: WIDTH,
    height: HEIGHT,
    config: {
      font: "sans-serif",
      axis: { labelFontSize: 11, titleFontSize: 11, gridColor: "#e8e8e8" },
      legend: {
        labelFontSize: 11,
        titleFontSize: 11,
        orient: "bottom",
        direction: "horizontal",
        columns: 3,
        labelLimit: 260,
      },
      view: { stroke: "#ccc" },
    },
    ...spec,
    // deno-lint-ignore no-explicit-any
  } as any);
  const view = new vega.View(vega.parse(compiled.spec), { renderer: "none" });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Trailing mean over `w` points (the start uses what it has). */
export function rolling(values: number[], w: number): number[] {
  const out: number[] = [];
  let sum = 0;
  for (let i = 0; i < values.length; i++) {
    sum += values[i];
    if (i >= w) sum -= values[i - w];
    out.push(sum / Math.min(i + 1, w));
  }
  return out;
}

const finite = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);

export function lineChart(
  rows: Row[],
  opts: {
    y: string;
    yScale?: Record<string, unknown>;
    rules?: { value: number; label: string }[];
    points?: boolean;
    colors?: Record<string, string>;
  },
): Record<string, unknown> {
  const series = [...new Set(rows.map((r) => r.series as string))];
  const layers: Record<string, unknown>[] = [{
    data: { values: rows },
    mark: { type: "line", point: opts.points ?? false, strokeWidth: 1.5, clip: true },
    encoding: {
      x: AXIS_X,
      y: { field: "value", type: "quantitative", title: opts.y, scale: opts.yScale ?? {} },
      color: {
        field: "series",
        type: "nominal",
        title: null,
        scale: opts.colors
          ? { domain: Object.keys(opts.colors), range: Object.values(opts.colors) }
          : { domain: series },
      },
    },
  }];
  for (const r of opts.rules ?? []) {
    layers.push({
      data: { values: [{ value: r.value, label: r.label }] },
      layer: [
        {
          mark: { type: "rule", strokeDash: [4, 3], color: "#b22" },
          encoding: { y: { field: "value", type: "quantitative" } },
        },
        {
          mark: { type: "text", align: "right", dy: -5, color: "#b22", fontSize: 10, x: WIDTH - 4 },
          encoding: { y: { field: "value", type: "quantitative" }, text: { field: "label" } },
        },
      ],
    });
  }
  return { layer: layers };
}

function stepRows(steps: StepLine[], series: Record<string, (s: StepLine) => unknown>): Row[] {
  const rows: Row[] = [];
  for (const [name, f] of Object.entries(series)) {
    for (const s of steps) {
      const v = f(s);
      if (finite(v)) rows.push({ step: s.step, value: v, series: name });
    }
  }
  return rows;
}

const smooth = (steps: StepLine[]) => Math.max(1, Math.min(50, Math.round(steps.length / 20)));

/** All the report's charts for a run (skipping series the run does not have). */
export async function runCharts(d: RunData): Promise<Chart[]> {
  const steps = d.steps.filter((s) => s.batch_size > 0 || s.loss_plus !== null);
  const w = smooth(steps);
  const charts: Chart[] = [];
  const add = async (id: string, title: string, caption: string, spec: Record<string, unknown>) =>
    charts.push({ id, title, caption, svg: await renderSvg(spec) });

  // Loss.
  const losses = steps.filter((s) => finite(s.loss_plus) && finite(s.loss_minus));
  const meanLoss = rolling(losses.map((s) => (s.loss_plus! + s.loss_minus!) / 2), w);
  const lossRows = [
    ...stepRows(losses, { "loss+ (theta + phi z)": (s) => s.loss_plus }),
    ...stepRows(losses, { "loss- (theta - phi z)": (s) => s.loss_minus }),
    ...losses.map((s, i) => ({ step: s.step, value: meanLoss[i], series: `mean, ${w}-step avg` })),
    ...d.evals.filter((e) => finite(e.loss)).map((e) => ({
      step: e.step,
      value: e.loss as number,
      series: `${e.split} loss (eval)`,
    })),
  ];
  await add(
    "loss",
    "Training loss",
    "Per-step candidate cross-entropy of the sampled batch at theta + phi z and theta - phi z, " +
      "their smoothed mean, and the evaluation loss. A loss that rises steadily means train.lr " +
      "is too large.",
    lineChart(lossRows, {
      y: "cross-entropy",
      yScale: { zero: false },
      colors: {
        "loss+ (theta + phi z)": "#9ecae1",
        "loss- (theta - phi z)": "#fdae6b",
        [`mean, ${w}-step avg`]: "#08519c",
        "val loss (eval)": "#2ca02c",
        "test loss (eval)": "#9467bd",
      },
    }),
  );

  // Accuracy (the task metric).
  const acc = d.evals.filter((e) => finite(e.accuracy)).map((e: EvalLine) => ({
    step: e.step,
    value: e.accuracy as number,
    series: `${e.split} accuracy`,
  }));
  if (acc.length) {
    await add(
      "accuracy",
      "Accuracy (task metric)",
      "Accuracy on the validation split at each evaluation, and on val and test at the end.",
      lineChart(acc, {
        y: "accuracy",
        yScale: { domain: [0, 1] },
        points: true,
        rules: [{ value: 0.5, label: "chance (2 classes)" }],
      }),
    );
  }

  // Epsilon spent.
  const eps = steps.filter((s) => finite(s.epsilon)).map((s) => ({
    step: s.step,
    value: s.epsilon as number,
    series: "epsilon spent",
  }));
  if (d.summary && finite(d.summary.epsilon)) {
    eps.push({ step: d.summary.steps, value: d.summary.epsilon, series: "epsilon spent" });
  }
  if (eps.length) {
    eps.unshift({ step: 0, value: 0, series: "epsilon spent" });
    const target = d.run?.privacy_plan?.target_epsilon;
    await add(
      "epsilon",
      "Privacy budget spent",
      "Epsilon (at the run's delta) after each logged step, by the run's accountant. The run " +
        "stops before the target would be exceeded.",
      lineChart(eps, {
        y: "epsilon",
        points: eps.length < 60,
        rules: finite(target) ? [{ value: target, label: `target epsilon ${target}` }] : [],
      }),
    );
  }

  // Clipping rate.
  if (d.run?.privacy_plan) {
    const cf = steps.map((s) => s.clipped_fraction);
    const cr = rolling(cf, w);
    const rows = [
      ...stepRows(steps, { "per step": (s) => s.clipped_fraction }),
      ...steps.map((s, i) => ({ step: s.step, value: cr[i], series: `${w}-step avg` })),
    ];
    await add(
      "clipping",
      "Clipped fraction (|g_i| > C)",
      "Fraction of per-example projected gradients clipped at C = privacy.clip. Above 90%: C " +
        "is too small, raise privacy.clip; below 1%: C is too large (the noise sigma*C is " +
        "wasted), lower it.",
      lineChart(rows, {
        y: "clipped fraction",
        yScale: { domain: [0, 1] },
        colors: { "per step": "#c6dbef", [`${w}-step avg`]: "#08519c" },
        rules: [{ value: 0.9, label: "90%" }, { value: 0.01, label: "1%" }],
      }),
    );
  }

  // |ghat| against the noise.
  const noise = steps.find((s) => finite(s.noise_std))?.noise_std;
  const absG = steps.map((s) => Math.abs(s.ghat));
  const ar = rolling(absG, w);
  const gRows = [
    ...steps.map((s, i) => ({ step: s.step, value: absG[i], series: "|ghat|" })),
    ...steps.map((s, i) => ({ step: s.step, value: ar[i], series: `${w}-step avg` })),
    ...stepRows(steps, { "mean |g_i| (before clipping)": (s) => s.mean_abs_g }),
  ].filter((r) => finite(r.value));
  if (gRows.length) {
    await add(
      "ghat",
      "Projected gradient |ghat| and the noise",
      "The released |ghat| per step, the mean per-example |g_i| before clipping, and the noise " +
        "std in ghat (sigma * C / expected batch). When |ghat| sits on the noise line, the " +
        "update is mostly noise (noise-to-signal >= 1).",
      lineChart(gRows.filter((r) => (r.value as number) > 0), {
        y: "|ghat| (log scale)",
        yScale: { type: "log" },
        colors: {
          "|ghat|": "#c6dbef",
          [`${w}-step avg`]: "#08519c",
          "mean |g_i| (before clipping)": "#ff7f0e",
        },
        rules: finite(noise) && noise > 0
          ? [{ value: noise, label: `noise std ${Number(noise.toPrecision(3))}` }]
          : [],
      }),
    );
  }

  // Step time split.
  const timed = steps.filter((s) => finite(s.forward_s));
  if (timed.length) {
    const parts: [string, (s: StepLine) => number][] = [
      ["forward", (s) => s.forward_s!],
      ["perturbation", (s) => s.perturb_s ?? 0],
      ["waiting (coordinator)", (s) => s.wait_s ?? 0],
    ];
    const rows: Row[] = [];
    for (const [name, f] of parts) {
      const r = rolling(timed.map(f), w);
      timed.forEach((s, i) => rows.push({ step: s.step, value: r[i], series: name }));
    }
    await add(
      "time",
      "Step time split",
      `Seconds per step (${w}-step average), stacked: the two forward passes, the three ` +
        "perturbation passes (begin, flip, update; including their round trip to every worker), " +
        "and the rest on the coordinator (sampling, noise, waiting for the ledger to be durable).",
      {
        data: { values: rows },
        mark: { type: "area", opacity: 0.85 },
        encoding: {
          x: AXIS_X,
          y: { field: "value", type: "quantitative", stack: "zero", title: "seconds / step" },
          color: {
            field: "series",
            type: "nominal",
            title: null,
            scale: { domain: parts.map((p) => p[0]), range: ["#4c78a8", "#f58518", "#b279a2"] },
          },
          order: { field: "series" },
        },
      },
    );
  }
  return charts;
}
