/**
 * Privacy loss random variables of one DP-ZO step: the Poisson-subsampled Gaussian and Laplace
 * mechanisms on a clipped sum with sensitivity C (noise scaled to C = 1), under add/remove-one
 * neighbours.
 *
 * For add/remove there are two dominating pairs (Zhu, Dong and Wang 2022; dp_accounting):
 *   remove: P = (1-q) M(0) + q M(1),  Q = M(0)
 *   add:    P = M(0),                 Q = (1-q) M(0) + q M(1)
 * and the composed guarantee is the worse of the two compositions. Here M(m) is N(m, sigma^2)
 * or Laplace(m, b). The privacy loss is L = log(dP/dQ)(X) with X ~ P; everything the
 * accountants need is its distribution under P and Q and the hockey-stick divergence
 * delta(eps) = E_P[(1 - exp(eps - L))_+] (Balle and Wang 2018 for the Gaussian), written so
 * that it keeps full relative precision in the tails.
 */
import { gaussianHockeyStick, normalSf } from "./special.ts";
import { discreteStepLosses } from "./discrete.ts";

export type Mechanism = "gaussian" | "laplace";
export type Direction = "remove" | "add";

/** One step as the ledger records it: sampling rate and the noise of its mechanism. */
export interface LedgerStepPrivacy {
  /** Poisson sampling rate, in (0, 1]. */
  q: number;
  /** Gaussian noise multiplier: the noise std is sigma * C. */
  sigma?: number;
  /** Laplace scale in units of C: the noise is Laplace(b * C). */
  b?: number;
  mechanism: Mechanism;
  /**
   * Set for the discrete mechanisms (discrete.ts): the sensitivity C in grid units, D. The noise
   * is then a discrete Gaussian of parameter sigma D or a discrete Laplace of scale b D on the
   * integers. Absent: the continuous mechanism (ledgers written before format 2).
   */
  gridUnits?: number;
}

/** Tail probabilities of the privacy loss at a threshold l, under P and under Q. */
export interface LossTails {
  /** P(L <= l) */
  cdfP: number;
  /** P(L > l) */
  sfP: number;
  /** Q(L <= l) */
  cdfQ: number;
  /** Q(L > l) */
  sfQ: number;
}

/** The privacy loss distribution of one step in one direction. */
export interface PrivacyLoss {
  tails(l: number): LossTails;
  /** Hockey-stick divergence delta(eps) = P(L > eps) - e^eps Q(L > eps). */
  delta(eps: number): number;
  /** Essential infimum of L (may be -Infinity). */
  lower: number;
  /** Essential supremum of L (may be Infinity). */
  upper: number;
}

/** Noise parameter of a step (sigma or b), validated. */
export function stepNoise(step: LedgerStepPrivacy): number {
  const v = step.mechanism === "gaussian" ? step.sigma : step.b;
  const name = step.mechanism === "gaussian" ? "sigma" : "b";
  if (v === undefined || !(v > 0) || !Number.isFinite(v)) {
    throw new RangeError(`${step.mechanism} step needs a finite ${name} > 0, got ${v}`);
  }
  if (!(step.q > 0 && step.q <= 1)) {
    throw new RangeError(`sampling rate q must be in (0, 1], got ${step.q}`);
  }
  return v;
}

function normalPair(z: number): [number, number] {
  // [P(Z <= z), P(Z > z)], the smaller one computed directly
  if (z >= 0) {
    const s = normalSf(z);
    return [1 - s, s];
  }
  const c = normalSf(-z);
  return [c, 1 - c];
}

/** log((e^l - (1 - q)) / q) = log1p(expm1(l) / q): the inverse of v -> log(1 - q + q e^v). */
function unmix(l: number, q: number): number {
  return Math.log1p(Math.expm1(l) / q);
}

/** Remove direction of the Poisson-subsampled Gaussian mechanism. */
export function gaussianRemove(q: number, sigma: number): PrivacyLoss {
  const mu = 1 / sigma;
  const lower = q === 1 ? -Infinity : Math.log1p(-q);
  const zOf = (l: number) => (unmix(l, q) + 0.5 * mu * mu) / mu;
  return {
    lower,
    upper: Infinity,
    tails(l) {
      if (l <= lower) return { cdfP: 0, sfP: 1, cdfQ: 0, sfQ: 1 };
      const z = zOf(l);
      const [c0, s0] = normalPair(z);
      const [c1, s1] = normalPair(z - mu);
      return {
        cdfP: (1 - q) * c0 + q * c1,
        sfP: (1 - q) * s0 + q * s1,
        cdfQ: c0,
        sfQ: s0,
      };
    },
    delta(eps) {
      if (eps <= lower) return -Math.expm1(eps);
      return q * gaussianHockeyStick(zOf(eps), mu);
    },
  };
}

/** Add direction of the Poisson-subsampled Gaussian mechanism. */
export function gaussianAdd(q: number, sigma: number): PrivacyLoss {
  const mu = 1 / sigma;
  const upper = q === 1 ? Infinity : -Math.log1p(-q);
  // L > l  <=>  z < z'(l)
  const zOf = (l: number) => (unmix(-l, q) + 0.5 * mu * mu) / mu;
  return {
    lower: -Infinity,
    upper,
    tails(l) {
      if (l >= upper) return { cdfP: 1, sfP: 0, cdfQ: 1, sfQ: 0 };
      const z = zOf(l);
      const [c0, s0] = normalPair(z);
      const [c1, s1] = normalPair(z - mu);
      return {
        cdfP: s0,
        sfP: c0,
        cdfQ: (1 - q) * s0 + q * s1,
        sfQ: (1 - q) * c0 + q * c1,
      };
    },
    delta(eps) {
      if (eps >= upper) return 0;
      const w = mu - zOf(eps);
      // delta = q e^eps e^{-(w mu - mu^2/2)} H(w, mu)
      const h = gaussianHockeyStick(w, mu);
      return h === 0 ? 0 : q * Math.exp(eps - w * mu + 0.5 * mu * mu) * h;
    },
  };
}

/** Remove direction of the Poisson-subsampled Laplace mechanism (eps0 = 1/b). */
export function laplaceRemove(q: number, b: number): PrivacyLoss {
  const e0 = 1 / b;
  const lower = Math.log1p(q * Math.expm1(-e0));
  const upper = Math.log1p(q * Math.expm1(e0));
  return {
    lower,
    upper,
    tails(l) {
      if (l < lower) return { cdfP: 0, sfP: 1, cdfQ: 0, sfQ: 1 };
      if (l >= upper) return { cdfP: 1, sfP: 0, cdfQ: 1, sfQ: 0 };
      const v = Math.min(Math.max(unmix(l, q), -e0), e0);
      // base loss L0 = (|x| - |x - 1|)/b under Lap(0, b) and Lap(1, b)
      const s0 = 0.5 * Math.exp(-(v + e0) / 2);
      const c1 = 0.5 * Math.exp((v - e0) / 2);
      const c0 = 1 - s0;
      const s1 = 1 - c1;
      return {
        cdfP: (1 - q) * c0 + q * c1,
        sfP: (1 - q) * s0 + q * s1,
        cdfQ: c0,
        sfQ: s0,
      };
    },
    delta(eps) {
      if (eps < lower) return -Math.expm1(eps);
      if (eps >= upper) return 0;
      const v = Math.min(Math.max(unmix(eps, q), -e0), e0);
      return q * -Math.expm1((v - e0) / 2);
    },
  };
}

/** Add direction of the Poisson-subsampled Laplace mechanism (eps0 = 1/b). */
export function laplaceAdd(q: number, b: number): PrivacyLoss {
  const e0 = 1 / b;
  const lower = -Math.log1p(q * Math.expm1(e0));
  const upper = -Math.log1p(q * Math.expm1(-e0));
  return {
    lower,
    upper,
    tails(l) {
      if (l >= upper) return { cdfP: 1, sfP: 0, cdfQ: 1, sfQ: 0 };
      if (l < lower) return { cdfP: 0, sfP: 1, cdfQ: 0, sfQ: 1 };
      // L > l  <=>  L0 < v
      const v = Math.min(Math.max(unmix(-l, q), -e0), e0);
      const c0 = 0.5 * Math.exp(-(v + e0) / 2); // P0(L0 >= v)
      const g1 = 0.5 * Math.exp((v - e0) / 2); // P1(L0 < v)
      const sfQ = (1 - q) * (1 - c0) + q * g1;
      return { cdfP: c0, sfP: 1 - c0, cdfQ: 1 - sfQ, sfQ };
    },
    delta(eps) {
      if (eps >= upper) return 0;
      if (eps < lower) return -Math.expm1(eps);
      const v = Math.min(Math.max(unmix(-eps, q), -e0), e0);
      return q * Math.exp(eps + v) * -Math.expm1(-(v + e0) / 2);
    },
  };
}

/** Both dominating pairs of a step: [remove, add]. */
export function stepLosses(step: LedgerStepPrivacy): [PrivacyLoss, PrivacyLoss] {
  const noise = stepNoise(step);
  if (step.gridUnits !== undefined) {
    return discreteStepLosses(step.mechanism, step.q, noise, step.gridUnits);
  }
  if (step.mechanism === "gaussian") {
    return [gaussianRemove(step.q, noise), gaussianAdd(step.q, noise)];
  }
  return [laplaceRemove(step.q, noise), laplaceAdd(step.q, noise)];
}
