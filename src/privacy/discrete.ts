/**
 * The discrete mechanisms a run uses, and their exact privacy loss distributions.
 *
 * A private step rounds each unit's clipped contribution (in [-C, C]) to an integer number of
 * grid units of C / D (D = `gridUnits`, the sensitivity in units; stochastic rounding, so the
 * rounded value stays in [-D, D]), sums the integers, and adds integer noise: a discrete
 * Gaussian N_Z(0, (sigma D)^2) or a discrete Laplace Lap_Z(b D). The released noisy sum is an
 * integer; ghat = units * (C / D) / (q n) is a fixed function of it.
 *
 * Why the accounting below is an upper bound:
 * 1. Worst neighbour. Adding or removing one unit shifts the integer sum by some k in [-D, D]
 *    (random under stochastic rounding). Both noise families have a monotone likelihood ratio
 *    in x and are stochastically ordered in their shift, so a threshold test is optimal for
 *    (M(0), M(k)) and (M(0), M(D)) alike, and has more power against M(D): the trade-off curve
 *    of shift k lies above that of shift D, for both orders of the pair. A random k is a
 *    mixture of shifts, which is dominated too (joint convexity of the hockey-stick
 *    divergence). So (M(0), M(D)) is a dominating pair.
 * 2. Poisson subsampling of a dominating pair: remove (P, Q) = ((1-q) M(0) + q M(D), M(0)),
 *    add (P, Q) = (M(0), (1-q) M(0) + q M(D)) (Zhu, Dong and Wang 2022), the same pairs as the
 *    continuous mechanisms in mechanisms.ts, with M(m) now a distribution on the integers.
 * 3. Their privacy loss is computed exactly (sums of the integer pmf), and composed by the PLD
 *    engine with its pessimistic discretisation (pld.ts), as for the continuous mechanisms.
 *
 * The discrete Gaussian gives essentially the privacy of the continuous one (CKS20, Theorem 7
 * and Figure 1), but not always at most it; the accountant (accountant.ts) therefore reports
 * the LARGER of this exact discrete epsilon and the continuous one for the same sigma: never
 * below the continuous reference, never below the truth.
 */
import type { LossTails, PrivacyLoss } from "./mechanisms.ts";

/**
 * Grid of a run with noise multiplier `noise` (sigma or b): D = round(4096 / noise), at least 1,
 * so that the noise is about 4096 units wide whatever sigma. Rounding then costs (variance) at
 * most 1/4 unit^2 per example against (4096 units)^2 of noise.
 */
export const GRID_NOISE_UNITS = 4096;
export function gridUnits(noise: number): number {
  if (!(noise > 0) || !Number.isFinite(noise)) throw new RangeError(`gridUnits: noise ${noise}`);
  return Math.max(1, Math.round(GRID_NOISE_UNITS / noise));
}

/** Tails of a symmetric integer distribution: sf(k) = P(X > k), cdf(k) = P(X <= k). */
interface IntegerTails {
  sf(k: number): number;
  cdf(k: number): number;
}

const tableCache = new Map<number, Float64Array>();

/**
 * N_Z(0, s^2): upper tails P(X > k) for k = 0..K, summed from the far end inwards (full relative
 * precision in the tail); beyond K = 38.6 s every mass underflows a double.
 */
function discreteGaussianTails(s: number): IntegerTails {
  let tail = tableCache.get(s);
  if (!tail) {
    const K = Math.ceil(38.6 * s) + 2;
    const w = new Float64Array(K + 1);
    const inv = 1 / (2 * s * s);
    for (let x = 0; x <= K; x++) w[x] = Math.exp(-x * x * inv);
    // Z = w0 + 2 sum_{x>=1} w_x, summed from the small end
    let z = 0;
    for (let x = K; x >= 1; x--) z += w[x];
    z = w[0] + 2 * z;
    tail = new Float64Array(K + 1);
    let acc = 0;
    for (let k = K; k >= 0; k--) {
      tail[k] = acc / z; // P(X > k) = sum_{x > k} w_x / Z
      acc += w[k];
    }
    if (tableCache.size >= 4) tableCache.delete(tableCache.keys().next().value!);
    tableCache.set(s, tail);
  }
  const t = tail;
  const upper = (k: number) => (k >= t.length ? 0 : t[k]); // P(X > k), k >= 0
  return {
    sf: (k) => (k >= 0 ? upper(k) : 1 - upper(-k - 1)),
    cdf: (k) => (k >= 0 ? 1 - upper(k) : upper(-k - 1)),
  };
}

/** Lap_Z(tau): P(X > k) = r^{k+1} / (1 + r) for k >= 0, r = exp(-1/tau). */
function discreteLaplaceTails(tau: number): IntegerTails {
  const r = Math.exp(-1 / tau);
  const upper = (k: number) => Math.exp(-(k + 1) / tau) / (1 + r);
  return {
    sf: (k) => (k >= 0 ? upper(k) : 1 - upper(-k - 1)),
    cdf: (k) => (k >= 0 ? 1 - upper(k) : upper(-k - 1)),
  };
}

/** log1p(expm1(l) / q): the inverse of v -> log(1 - q + q e^v). */
function unmix(l: number, q: number): number {
  return Math.log1p(Math.expm1(l) / q);
}

/**
 * The base loss L0(x) = log M(D)(x)/M(0)(x) as thresholds on x: `above(v)` is the real theta
 * with L0(x) > v <=> x > theta, `atLeast(u)` the real theta with L0(x) >= u <=> x >= theta
 * (+-Infinity when all or no x qualify); `e0` bounds |L0| (Infinity for the Gaussian).
 */
interface BaseLoss {
  tails: IntegerTails;
  shift: number;
  above(v: number): number;
  atLeast(u: number): number;
  e0: number;
}

function gaussianBase(sigma: number, units: number): BaseLoss {
  const s = sigma * units;
  // L0(x) = (D / s^2) (x - D / 2), increasing
  const theta = (v: number) => units / 2 + (v * s * s) / units;
  return {
    tails: discreteGaussianTails(s),
    shift: units,
    above: theta,
    atLeast: theta,
    e0: Infinity,
  };
}

function laplaceBase(b: number, units: number): BaseLoss {
  const tau = b * units;
  const e0 = units / tau;
  // L0(x) = (|x| - |x - D|) / tau: -e0 for x <= 0, (2x - D) / tau inside, e0 for x >= D
  return {
    tails: discreteLaplaceTails(tau),
    shift: units,
    above: (v) => (v < -e0 ? -Infinity : v >= e0 ? Infinity : (v * tau + units) / 2),
    atLeast: (u) => (u <= -e0 ? -Infinity : u > e0 ? Infinity : (u * tau + units) / 2),
    e0,
  };
}

const BIG = 2 ** 52;
const clampK = (k: number) => Math.max(-BIG, Math.min(BIG, k));

/** Remove direction: P = (1-q) M(0) + q M(D), Q = M(0); L = log(1 - q + q e^{L0}). */
function removeLoss(base: BaseLoss, q: number): PrivacyLoss {
  const { tails: t, shift } = base;
  const lower = Number.isFinite(base.e0)
    ? Math.log1p(q * Math.expm1(-base.e0))
    : q === 1
    ? -Infinity
    : Math.log1p(-q);
  const upper = Number.isFinite(base.e0) ? Math.log1p(q * Math.expm1(base.e0)) : Infinity;
  const tails = (l: number): LossTails => {
    if (l < lower) return { cdfP: 0, sfP: 1, cdfQ: 0, sfQ: 1 };
    if (l >= upper) return { cdfP: 1, sfP: 0, cdfQ: 1, sfQ: 0 };
    const theta = base.above(unmix(l, q)); // L > l <=> x > theta <=> x > floor(theta)
    if (theta === -Infinity) return { cdfP: 0, sfP: 1, cdfQ: 0, sfQ: 1 };
    if (theta === Infinity) return { cdfP: 1, sfP: 0, cdfQ: 1, sfQ: 0 };
    const k = clampK(Math.floor(theta));
    return {
      cdfP: (1 - q) * t.cdf(k) + q * t.cdf(k - shift),
      sfP: (1 - q) * t.sf(k) + q * t.sf(k - shift),
      cdfQ: t.cdf(k),
      sfQ: t.sf(k),
    };
  };
  return fromTails(lower, upper, tails);
}

/** A privacy loss given by its tails; delta(eps) = P(L > eps) - e^eps Q(L > eps) from them. */
function fromTails(lower: number, upper: number, tails: (l: number) => LossTails): PrivacyLoss {
  return {
    lower,
    upper,
    tails,
    delta(eps) {
      if (eps < lower) return -Math.expm1(eps);
      const r = tails(eps);
      return Math.max(0, r.sfP - Math.exp(eps) * r.sfQ);
    },
  };
}

/** Add direction: P = M(0), Q = (1-q) M(0) + q M(D); L = -log(1 - q + q e^{L0}). */
function addLoss(base: BaseLoss, q: number): PrivacyLoss {
  const { tails: t, shift } = base;
  const lower = Number.isFinite(base.e0) ? -Math.log1p(q * Math.expm1(base.e0)) : -Infinity;
  const upper = Number.isFinite(base.e0)
    ? -Math.log1p(q * Math.expm1(-base.e0))
    : q === 1
    ? Infinity
    : -Math.log1p(-q);
  const tails = (l: number): LossTails => {
    if (l < lower) return { cdfP: 0, sfP: 1, cdfQ: 0, sfQ: 1 };
    if (l >= upper) return { cdfP: 1, sfP: 0, cdfQ: 1, sfQ: 0 };
    // L > l <=> L0 < u <=> not (x >= theta) <=> x <= ceil(theta) - 1
    const theta = base.atLeast(unmix(-l, q));
    if (theta === -Infinity) return { cdfP: 1, sfP: 0, cdfQ: 1, sfQ: 0 };
    if (theta === Infinity) return { cdfP: 0, sfP: 1, cdfQ: 0, sfQ: 1 };
    const k = clampK(Math.ceil(theta) - 1);
    // P(L > l) = P(x <= k): the "sf" of L is the cdf of x
    return {
      sfP: t.cdf(k),
      cdfP: t.sf(k),
      sfQ: (1 - q) * t.cdf(k) + q * t.cdf(k - shift),
      cdfQ: (1 - q) * t.sf(k) + q * t.sf(k - shift),
    };
  };
  return fromTails(lower, upper, tails);
}

/** Both dominating pairs of a discrete step: [remove, add]. */
export function discreteStepLosses(
  mechanism: "gaussian" | "laplace",
  q: number,
  noise: number,
  units: number,
): [PrivacyLoss, PrivacyLoss] {
  if (!(Number.isInteger(units) && units >= 1)) {
    throw new RangeError(`grid units must be a whole number >= 1, got ${units}`);
  }
  const base = mechanism === "gaussian" ? gaussianBase(noise, units) : laplaceBase(noise, units);
  return [removeLoss(base, q), addLoss(base, q)];
}
