/**
 * Calibration: the least noise (smallest Gaussian sigma, or smallest Laplace scale b) that
 * meets a target (epsilon, delta) for a sampling rate q and T steps, by the chosen accountant.
 *
 * The answer is rounded up to a multiple of `unit` (default 0.001), so the returned noise
 * always meets the target (epsilon is decreasing in the noise); the search is over that
 * lattice: bracket, then log-log interpolation with neighbour probes (a few accountant calls).
 */
import type { Mechanism } from "./mechanisms.ts";
import { type AccountantName, ledgerEpsilon } from "./accountant.ts";
import { laplaceScaleForEpsilon } from "./laplace.ts";
import { DEFAULT_RDP_ORDERS, rdpToEpsilon } from "./rdp.ts";
import type { PldOptions } from "./pld.ts";
import { gridUnits } from "./discrete.ts";

export interface CalibrationQuery {
  mechanism: Mechanism;
  q: number;
  steps: number;
  epsilon: number;
  delta: number;
  accountant?: AccountantName;
  /** Rounding lattice of the answer; default 0.001. */
  unit?: number;
  /**
   * The discrete mechanism (discrete.ts) on the grid `gridUnits(noise)`: its epsilon is the
   * larger of the exact discrete one and the continuous one, so the continuous answer is raised
   * by lattice units until the discrete mechanism meets the target too.
   */
  discrete?: boolean;
  pld?: PldOptions;
}

export interface Calibration {
  /** sigma (Gaussian) or b (Laplace), rounded up to the lattice. */
  noise: number;
  /** Epsilon the accountant reports at `noise` (<= the target). */
  epsilon: number;
  error: number;
  accountant: "pld" | "rdp" | "pure";
  /** Accountant evaluations the search took. */
  evaluations: number;
}

/** The largest noise the search tries (sigma): far beyond any useful run. */
const MAX_NOISE = 1e9;

/**
 * The smallest epsilon the RDP accountant can report at `delta`, whatever the noise: its
 * (epsilon, delta) conversion at zero RDP, minimised over the orders (about 0.0035 at 1e-5).
 */
export function rdpEpsilonFloor(delta: number): number {
  return rdpToEpsilon(DEFAULT_RDP_ORDERS.map(() => 0), delta).epsilon;
}

/**
 * Smallest noise meeting the target, rounded up to `unit`. Works for any target epsilon > 0
 * with the PLD accountant (tested down to 1e-3); the RDP accountant cannot go below
 * `rdpEpsilonFloor(delta)` and says so.
 */
export function calibrateNoise(query: CalibrationQuery): Calibration {
  const { mechanism, q, steps, epsilon: target, delta } = query;
  const name = query.accountant ?? "pld";
  if (!(target > 0)) throw new RangeError(`target epsilon must be > 0, got ${target}`);
  if (!(Number.isInteger(steps) && steps >= 1)) {
    throw new RangeError(`steps must be a positive integer, got ${steps}`);
  }
  let evaluations = 0;
  const cache = new Map<number, ReturnType<typeof ledgerEpsilon>>();
  const report = (m: number) => {
    let r = cache.get(m);
    if (r === undefined) {
      const noise = m * unit;
      const step = mechanism === "gaussian"
        ? { mechanism, q, sigma: noise }
        : { mechanism, q, b: noise };
      r = ledgerEpsilon([{ step, count: steps }], delta, name, { ...query.pld, bounds: false });
      evaluations++;
      cache.set(m, r);
    }
    return r;
  };
  const unit = query.unit ?? 1e-3;
  const eps = (m: number) => report(m).epsilon;

  // bracket: lo fails (eps > target), hi passes (eps <= target), in lattice units
  let hi: number;
  if (mechanism === "laplace") {
    hi = Math.ceil(laplaceScaleForEpsilon(q, steps, target) / unit);
  } else {
    if (delta === 0) throw new RangeError("the Gaussian mechanism needs delta > 0");
    const floor = rdpEpsilonFloor(delta);
    if (name === "rdp" && target <= floor) {
      throw new RangeError(
        `the RDP accountant cannot certify epsilon ${target} at delta ${delta} with any noise ` +
          `(its smallest is ${floor.toPrecision(3)}); use the PLD accountant (--accountant pld)`,
      );
    }
    // The looser RDP answer brackets the PLD one from above where RDP reaches the target;
    // below its floor (tiny epsilon), doubling starts from RDP's answer at twice the floor.
    hi = name === "rdp" ? Math.ceil(1 / unit) : calibrateNoise({
      ...query,
      accountant: "rdp",
      epsilon: Math.max(target, 2 * floor),
    }).noise / unit;
    hi = Math.round(hi);
    while (eps(hi) > target) {
      if (hi * unit >= MAX_NOISE) {
        throw new RangeError(
          `no sigma up to ${MAX_NOISE} meets epsilon ${target} at delta ${delta} ` +
            `(q = ${q}, ${steps} steps); raise the target epsilon or delta`,
        );
      }
      hi *= 2;
    }
  }
  let lo = Math.max(0, Math.floor(hi / 1.25));
  while (lo > 0 && eps(lo) <= target) {
    hi = lo;
    lo = Math.floor(lo / 2);
  }
  const logT = Math.log(target);
  while (hi - lo > 1) {
    let m: number;
    if (lo > 0 && Number.isFinite(eps(lo)) && eps(hi) > 0) {
      const a = Math.log(lo);
      const b = Math.log(hi);
      const ea = Math.log(eps(lo));
      const eb = Math.log(eps(hi));
      const frac = ea === eb ? 0.5 : (ea - logT) / (ea - eb);
      m = Math.round(Math.exp(a + Math.min(1, Math.max(0, frac)) * (b - a)));
    } else {
      m = Math.floor((lo + hi) / 2);
    }
    m = Math.min(hi - 1, Math.max(lo + 1, m));
    if (eps(m) <= target) {
      hi = m;
      if (m - 1 > lo && eps(m - 1) > target) lo = m - 1;
    } else {
      lo = m;
      if (m + 1 < hi && eps(m + 1) <= target) hi = m + 1;
    }
  }
  const stepAt = (m: number) => {
    const noise = Number((m * unit).toPrecision(12));
    const step = mechanism === "gaussian"
      ? { mechanism, q, sigma: noise }
      : { mechanism, q, b: noise };
    return query.discrete ? { ...step, gridUnits: gridUnits(noise) } : step;
  };
  // final report with the discretisation error (bounds on)
  let r = ledgerEpsilon([{ step: stepAt(hi), count: steps }], delta, name, query.pld);
  while (query.discrete && r.epsilon > target) {
    hi++;
    r = ledgerEpsilon([{ step: stepAt(hi), count: steps }], delta, name, query.pld);
    evaluations++;
  }
  const noise = Number((hi * unit).toPrecision(12));
  return {
    noise,
    epsilon: r.epsilon,
    error: r.error,
    accountant: r.accountant,
    evaluations,
  };
}
