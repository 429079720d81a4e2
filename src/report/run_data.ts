/**
 * Reads a run directory (run.json, ledger.jsonl, metrics.jsonl, summary.json when the run
 * finished) into the series a report plots. Tolerates a run in progress or one that stopped:
 * only run.json is required.
 */
import type { RunWarning } from "./warnings.ts";
import { type LedgerEntry, parseLedgerLine } from "../checkpoint/ledger.ts";

export interface StepLine {
  step: number;
  batch_size: number;
  loss_plus: number | null;
  loss_minus: number | null;
  ghat: number;
  clipped_fraction: number;
  mean_abs_g: number;
  step_s: number;
  noise_std?: number;
  forward_s?: number;
  perturb_s?: number;
  wait_s?: number;
  epsilon?: number;
}

export interface EvalLine {
  event: "eval";
  step: number;
  split: string;
  accuracy: number | null;
  loss: number | null;
  examples: number;
}

export interface RunData {
  dir: string;
  // deno-lint-ignore no-explicit-any
  run: any;
  // deno-lint-ignore no-explicit-any
  summary: any | null;
  /** The released steps: what epsilon counts. */
  ledger: LedgerEntry[];
  steps: StepLine[];
  evals: EvalLine[];
  warnings: RunWarning[];
  /** The error that stopped the run, when it did not finish. */
  error: string | null;
}

async function readJsonIfAny(path: string): Promise<unknown | null> {
  try {
    return JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new Error(`${path}: ${e instanceof Error ? e.message : e}`);
  }
}

export async function readRun(dir: string): Promise<RunData> {
  const run = await readJsonIfAny(`${dir}/run.json`);
  if (run === null) {
    throw new Error(`--run: ${dir} holds no run.json; give the run_dir of a dpzo train run`);
  }
  const summary = await readJsonIfAny(`${dir}/summary.json`);
  const steps: StepLine[] = [], evals: EvalLine[] = [], warnings: RunWarning[] = [];
  let error: string | null = null;
  let text = "";
  try {
    text = await Deno.readTextFile(`${dir}/metrics.jsonl`);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    let m;
    try {
      m = JSON.parse(line);
    } catch {
      continue; // a line being written while we read
    }
    if (m.event === "eval") evals.push(m);
    else if (m.event === "warning") warnings.push(m);
    else if (m.event === "stopped") error = m.message;
    else if (typeof m.step === "number" && m.event === undefined) steps.push(m);
  }
  return {
    dir,
    run,
    summary,
    ledger: await readLedgerSoFar(`${dir}/ledger.jsonl`),
    steps,
    evals,
    warnings,
    error,
  };
}

/**
 * The verified entries of a ledger that may be growing: up to the first line that is not (yet)
 * a whole valid entry.
 */
export async function readLedgerSoFar(path: string): Promise<LedgerEntry[]> {
  let text = "";
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const out: LedgerEntry[] = [];
  for (const [i, line] of text.split("\n").entries()) {
    if (!line) break;
    try {
      const e = parseLedgerLine(line, `${path}:${i + 1}`);
      if (e.step !== out.length + 1) break;
      out.push(e);
    } catch {
      break;
    }
  }
  return out;
}
