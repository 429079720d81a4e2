/**
 * The privacy statement in words — the ONE function that `dpzo privacy`, `dpzo train` and the
 * run report use, so that the three always say the same thing for the same parameters:
 *
 *   (3.9951, 1e-5)-DP for add/remove of one training example over 75000 steps with q=0.016,
 *   sigma=4.8, discrete noise on a grid of C/853 (accountant: PLD, pessimistic, the larger of
 *   the exact discrete and the continuous epsilon; discretisation error <= 0.0012)
 *
 * and, where they apply, by caveats (`privacyCaveats`), printed after it: passages shared by
 * several examples (protected only as a group), and an early stop decided on un-noised losses.
 *
 * Epsilon is rounded UP (the safe direction) to 4 decimals.
 *
 * K > 1 directions per step (DP-AggZO) change nothing in the accounting: a step releases one
 * K-vector, each unit's contribution clipped in L2 to C, with independent noise of std sigma C
 * per coordinate: one Gaussian mechanism of sensitivity C, whose privacy loss is that of the
 * one-dimensional one (rotation invariance). The sentence says so (`directionsNote`).
 */
import {
  type AccountantName,
  type EpsilonReport,
  ledgerEpsilon,
  type LedgerStepPrivacy,
  type Mechanism,
} from "../privacy/mod.ts";

/** What a privacy guarantee of T identical Poisson-subsampled steps depends on. */
export interface PrivacyParams {
  /** Poisson sampling rate. */
  q: number;
  steps: number;
  delta: number;
  mechanism: Mechanism;
  /** sigma (Gaussian noise multiplier) or b (Laplace scale), in units of the clip C. */
  noise: number;
  /** The accountant asked for ("prv" is answered by the PLD engine). */
  accountant: AccountantName;
  /** The discrete mechanism's grid: C in grid units (absent: continuous noise). */
  gridUnits?: number;
  /** What one neighbour adds or removes (default: one training example). */
  unit?: "example" | "context";
  /** Example units over passages: the most training examples sharing one (a group). */
  largestPassage?: number | null;
  /** The run stops early on un-noised training losses (train.stop_on_loss). */
  stopOnLoss?: boolean;
  /** Directions per step, K (train.directions); 1 when absent. The epsilon does not depend on it. */
  directions?: number;
}

/**
 * The statement's parameters of a run from its run.json (its `privacy_plan` and `config`) with
 * `released` steps: the ledger's entries, not the metrics lines.
 */
// deno-lint-ignore no-explicit-any
export function runPlanParams(run: any, released: number): PrivacyParams {
  const plan = run.privacy_plan, train = run.config?.train;
  return {
    q: plan.q,
    steps: released,
    delta: plan.delta,
    mechanism: plan.mechanism as Mechanism,
    noise: plan.noiseMultiplier,
    accountant: plan.accountant,
    gridUnits: plan.gridUnits,
    unit: plan.unit,
    stopOnLoss: train?.stop_on_loss,
    directions: train?.directions,
  };
}

/** The words for K > 1 directions per step ("" for one): why epsilon is that of K = 1. */
export function directionsNote(k: number | undefined): string {
  if (k === undefined || k <= 1) return "";
  return `, ${k} directions per step (each step one Gaussian release of a ${k}-vector ` +
    `clipped in L2 to C, sensitivity C: the epsilon of one direction)`;
}

/** The accountant's answer for `p` (epsilon, its discretisation error, the engine used). */
export function guaranteeOf(p: PrivacyParams): EpsilonReport {
  // No step released (a run interrupted before its first): nothing to account.
  if (p.steps === 0) return ledgerEpsilon([], p.delta, p.accountant);
  const step: LedgerStepPrivacy = p.mechanism === "gaussian"
    ? { mechanism: "gaussian", q: p.q, sigma: p.noise }
    : { mechanism: "laplace", q: p.q, b: p.noise };
  if (p.gridUnits !== undefined) step.gridUnits = p.gridUnits;
  return ledgerEpsilon([{ step, count: p.steps }], p.delta, p.accountant);
}

/** Rounds up (the safe direction for an epsilon) to `digits` decimals. */
export function ceilTo(x: number, digits: number): number {
  const s = 10 ** digits;
  return Math.ceil(x * s - 1e-9) / s;
}

export function fmtEps(x: number): string {
  return Number.isFinite(x) ? String(ceilTo(x, 4)) : "infinity";
}

export function fmtErr(x: number): string {
  if (!(x > 0)) return "0";
  return String(Number(x.toPrecision(2)));
}

export function fmtDelta(d: number): string {
  return d !== 0 && d < 1e-3 ? d.toExponential().replace(/e([+-])/, "e$1") : String(d);
}

export function accountantLabel(
  used: string,
  requested: AccountantName,
  discrete = false,
): string {
  const both = discrete ? ", the larger of the exact discrete and the continuous epsilon" : "";
  if (used === "pure") return `pure DP (Laplace, exact at delta = 0)${both}`;
  if (used === "rdp") return `RDP${both}`;
  return `${requested === "prv" ? "PLD (as prv), pessimistic" : "PLD, pessimistic"}${both}`;
}

/** What the guarantee does not cover, one sentence each, to print after the statement. */
export function privacyCaveats(p: Partial<PrivacyParams>): string[] {
  const out: string[] = [];
  const k = p.largestPassage;
  if ((p.unit ?? "example") === "example" && k !== undefined && k !== null && k > 1) {
    out.push(
      `Up to ${k} training examples share a passage: a passage is protected only as a group ` +
        `of ${k} examples (privacy.unit: context protects passages).`,
    );
  }
  if (p.stopOnLoss) {
    out.push(
      "The early stop on a non-finite or blown-up training loss is decided on un-noised " +
        "losses, which epsilon does not cover (train.stop_on_loss: false turns it off).",
    );
  }
  return out;
}

/**
 * The sentence: "(eps, delta)-DP for add/remove of one training example over T steps with q=..,
 * sigma=.. (accountant: ..)". Pass `g` when the accountant has already answered (it is computed
 * otherwise).
 */
export function privacyStatement(p: PrivacyParams, g: EpsilonReport = guaranteeOf(p)): string {
  const noiseName = p.mechanism === "gaussian" ? "sigma" : "b";
  const pure = g.epsilonPure !== undefined && p.delta > 0
    ? `; pure DP at delta = 0: epsilon ${fmtEps(g.epsilonPure)}`
    : "";
  const who = p.unit === "context"
    ? "one passage with all its training examples (privacy.unit: context)"
    : "one training example";
  const grid = p.gridUnits !== undefined ? `, discrete noise on a grid of C/${p.gridUnits}` : "";
  return `(${fmtEps(g.epsilon)}, ${
    fmtDelta(p.delta)
  })-DP for add/remove of ${who} over ${p.steps} steps with q=${p.q}, ${noiseName}=${p.noise}${grid}${
    directionsNote(p.directions)
  } (accountant: ${accountantLabel(g.accountant, p.accountant, p.gridUnits !== undefined)}${
    g.accountant === "pld" ? `; discretisation error <= ${fmtErr(g.error)}` : ""
  }${pure})`;
}

/** The same sentence for a finished run, from its summary.json. */
export function runPrivacyStatement(s: {
  epsilon: number | null;
  delta: number | null;
  mechanism: string;
  sigma?: number;
  b?: number;
  accountant: string | null;
  sampling_rate: number;
  steps: number;
  insecure_seed?: number | null;
  grid_units?: number;
  privacy_unit?: "example" | "context";
  largest_passage?: number | null;
  stop_on_loss?: boolean;
  directions?: number;
}): string {
  if (s.epsilon === null || s.delta === null || s.accountant === null) {
    return "none: a non-private run (privacy.enabled: false) gives no (epsilon, delta) guarantee";
  }
  const mechanism = s.mechanism as Mechanism;
  const text = privacyStatement({
    q: s.sampling_rate,
    steps: s.steps,
    delta: s.delta,
    mechanism,
    noise: (mechanism === "gaussian" ? s.sigma : s.b) as number,
    accountant: s.accountant as AccountantName,
    gridUnits: s.grid_units,
    unit: s.privacy_unit,
    largestPassage: s.largest_passage,
    stopOnLoss: s.stop_on_loss,
    directions: s.directions,
  });
  return s.insecure_seed !== null && s.insecure_seed !== undefined
    ? `${text} — NOT PRIVATE: insecure_seed was set (sampling and noise are reproducible)`
    : text;
}

/** The caveats of a finished run, from its summary.json. */
export function runPrivacyCaveats(s: {
  epsilon: number | null;
  privacy_unit?: "example" | "context";
  largest_passage?: number | null;
  stop_on_loss?: boolean;
}): string[] {
  if (s.epsilon === null) return [];
  return privacyCaveats({
    unit: s.privacy_unit,
    largestPassage: s.largest_passage,
    stopOnLoss: s.stop_on_loss,
  });
}
