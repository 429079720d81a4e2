/**
 * The privacy statement in words — the ONE function that `dpzo privacy`, `dpzo train` and the
 * run report use, so that the three always say the same thing for the same parameters:
 *
 *   (3.9951, 1e-5)-DP for add/remove of one training example over 75000 steps with q=0.016,
 *   sigma=4.8 (accountant: PLD, pessimistic; discretisation error <= 0.0012)
 *
 * Epsilon is rounded UP (the safe direction) to 4 decimals.
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
}

/** The accountant's answer for `p` (epsilon, its discretisation error, the engine used). */
export function guaranteeOf(p: PrivacyParams): EpsilonReport {
  // No step released (a run interrupted before its first): nothing to account.
  if (p.steps === 0) return ledgerEpsilon([], p.delta, p.accountant);
  const step: LedgerStepPrivacy = p.mechanism === "gaussian"
    ? { mechanism: "gaussian", q: p.q, sigma: p.noise }
    : { mechanism: "laplace", q: p.q, b: p.noise };
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

export function accountantLabel(used: string, requested: AccountantName): string {
  if (used === "pure") return "pure DP (Laplace, exact at delta = 0)";
  if (used === "rdp") return "RDP";
  return requested === "prv" ? "PLD (as prv), pessimistic" : "PLD, pessimistic";
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
  return `(${fmtEps(g.epsilon)}, ${
    fmtDelta(p.delta)
  })-DP for add/remove of one training example over ${p.steps} steps with q=${p.q}, ${noiseName}=${p.noise} (accountant: ${
    accountantLabel(g.accountant, p.accountant)
  }${g.accountant === "pld" ? `; discretisation error <= ${fmtErr(g.error)}` : ""}${pure})`;
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
  });
  return s.insecure_seed !== null && s.insecure_seed !== undefined
    ? `${text} — NOT PRIVATE: insecure_seed was set (sampling and noise are reproducible)`
    : text;
}
