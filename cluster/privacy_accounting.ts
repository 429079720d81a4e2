/**
 * The accountant calls the trainer makes, over `src/privacy`: epsilon of T identical steps and
 * the noise calibrated to a target. `prv` is answered by the PLD engine (the same distribution).
 */
import type { Mechanism } from "../src/dpzo/mechanism.ts";
import { calibrateNoise as calibrate, ledgerEpsilon } from "../src/privacy/mod.ts";

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

export function epsilonOf(
  query: AccountingQuery & { noise: number },
): { epsilon: number; error: number } {
  if (query.steps === 0) return { epsilon: 0, error: 0 };
  const step = query.mechanism === "gaussian"
    ? { q: query.q, sigma: query.noise, mechanism: query.mechanism }
    : { q: query.q, b: query.noise, mechanism: query.mechanism };
  const r = ledgerEpsilon([{ step, count: query.steps }], query.delta, engine(query.accountant));
  return { epsilon: r.epsilon, error: r.error };
}

export function calibrateNoise(query: AccountingQuery & { epsilon: number }): number {
  return calibrate({
    mechanism: query.mechanism,
    q: query.q,
    steps: query.steps,
    epsilon: query.epsilon,
    delta: query.delta,
    accountant: engine(query.accountant),
  }).noise;
}
