/**
 * The accountant calls the trainer makes, over `src/privacy`: epsilon of T identical steps, the
 * epsilon of a ledger as it was run (its entries, counted), and the noise calibrated to a
 * target. `prv` is answered by the PLD engine (the same distribution). Runs use the discrete
 * mechanisms (src/privacy/discrete.ts): `gridUnits` names the grid.
 */
import type { Mechanism } from "../src/dpzo/mechanism.ts";
import {
  calibrateNoise as calibrate,
  type EpsilonReport,
  ledgerEpsilon,
  type LedgerStepPrivacy,
} from "../src/privacy/mod.ts";
import { entryPrivacy, type LedgerEntry } from "../src/checkpoint/ledger.ts";

export interface AccountingQuery {
  q: number;
  delta: number;
  mechanism: Mechanism;
  accountant: "pld" | "prv" | "rdp";
  steps: number;
}

function engine(name: AccountingQuery["accountant"]): "pld" | "rdp" {
  return name === "rdp" ? "rdp" : "pld";
}

/** Epsilon of `steps` identical steps (discrete on `gridUnits` when given). */
export function epsilonOf(
  query: AccountingQuery & { noise: number; gridUnits?: number; bounds?: boolean },
): { epsilon: number; error: number } {
  if (query.steps === 0) return { epsilon: 0, error: 0 };
  const step: LedgerStepPrivacy = query.mechanism === "gaussian"
    ? { q: query.q, sigma: query.noise, mechanism: query.mechanism }
    : { q: query.q, b: query.noise, mechanism: query.mechanism };
  if (query.gridUnits !== undefined) step.gridUnits = query.gridUnits;
  const r = ledgerEpsilon([{ step, count: query.steps }], query.delta, engine(query.accountant), {
    bounds: query.bounds,
  });
  return { epsilon: r.epsilon, error: r.error };
}

/**
 * Epsilon spent by a ledger: every private entry counted with the q, noise and grid it records.
 * `bounds: false` skips the accountant's lower estimate (no discretisation error).
 */
export function ledgerGuarantee(
  entries: readonly LedgerEntry[],
  delta: number,
  accountant: AccountingQuery["accountant"],
  opts: { bounds?: boolean } = {},
): EpsilonReport {
  const steps = entries.map(entryPrivacy).filter((s): s is LedgerStepPrivacy => s !== null);
  return ledgerEpsilon(steps, delta, engine(accountant), { bounds: opts.bounds });
}

export function calibrateNoise(query: AccountingQuery & { epsilon: number }): number {
  return calibrate({
    mechanism: query.mechanism,
    q: query.q,
    steps: query.steps,
    epsilon: query.epsilon,
    delta: query.delta,
    accountant: engine(query.accountant),
    discrete: true,
  }).noise;
}
