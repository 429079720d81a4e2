/**
 * Rényi DP accountant for the Poisson-subsampled Gaussian mechanism.
 *
 * RDP of one step at order alpha from Mironov, Talwar and Zhang 2019, "Rényi Differential
 * Privacy of the Sampled Gaussian Mechanism": the binomial expansion for integer orders and the
 * two-sided erfc series for fractional ones (as in TensorFlow Privacy / dp_accounting).
 * Laplace steps are eps-DP with eps = log(1 + q (e^{1/b} - 1)), hence (alpha, min(eps,
 * alpha eps^2 / 2))-RDP (Bun and Steinke 2016). RDP composes by addition over the ledger; the
 * conversion to (epsilon, delta) is the improved one of Balle et al. 2020 and Canonne, Kamath
 * and Steinke 2020:
 *   eps = rdp(alpha) + log((alpha - 1)/alpha) - (log delta + log alpha)/(alpha - 1).
 */
import { logAdd, logErfc, logSub } from "./special.ts";
import { type LedgerStepPrivacy, stepNoise } from "./mechanisms.ts";
import type { StepGroup } from "./pld.ts";

/** The usual grid of orders (dp_accounting's default): 1.1 .. 10.9, 11 .. 63, 128 .. 1024. */
export const DEFAULT_RDP_ORDERS: readonly number[] = [
  ...Array.from({ length: 99 }, (_, i) => 1 + (i + 1) / 10),
  ...Array.from({ length: 53 }, (_, i) => 11 + i),
  128,
  256,
  512,
  1024,
];

/** log of the generalised binomial coefficients C(alpha, i), i = 0..n, with their signs. */
function logBinomials(alpha: number, n: number): { log: Float64Array; sign: Int8Array } {
  const log = new Float64Array(n + 1);
  const sign = new Int8Array(n + 1);
  sign[0] = 1;
  for (let i = 1; i <= n; i++) {
    const factor = (alpha - (i - 1)) / i;
    if (factor === 0) {
      log[i] = -Infinity;
      sign[i] = 0;
      continue;
    }
    log[i] = log[i - 1] + Math.log(Math.abs(factor));
    sign[i] = (sign[i - 1] * Math.sign(factor)) as -1 | 0 | 1;
  }
  return { log, sign };
}

/** log A_alpha for integer alpha (Mironov et al. 2019, Section 3.3). */
function logAInteger(q: number, sigma: number, alpha: number): number {
  const { log } = logBinomials(alpha, alpha);
  let logA = -Infinity;
  const lq = Math.log(q);
  const l1q = Math.log1p(-q);
  for (let i = 0; i <= alpha; i++) {
    const s = log[i] + i * lq + (alpha - i) * l1q + (i * i - i) / (2 * sigma * sigma);
    logA = logAdd(logA, s);
  }
  return logA;
}

/** log A_alpha for fractional alpha (Mironov et al. 2019, Section 3.3, two-sided series). */
function logAFractional(q: number, sigma: number, alpha: number): number {
  let logA0 = -Infinity;
  let logA1 = -Infinity;
  const z0 = sigma * sigma * Math.log(1 / q - 1) + 0.5;
  const lq = Math.log(q);
  const l1q = Math.log1p(-q);
  let logCoef = 0;
  let sign = 1;
  for (let i = 0; i < 100000; i++) {
    if (i > 0) {
      const factor = (alpha - (i - 1)) / i;
      logCoef += Math.log(Math.abs(factor));
      sign *= Math.sign(factor);
    }
    const j = alpha - i;
    const logT0 = logCoef + i * lq + j * l1q;
    const logT1 = logCoef + j * lq + i * l1q;
    const logE0 = Math.log(0.5) + logErfc((i - z0) / (Math.SQRT2 * sigma));
    const logE1 = Math.log(0.5) + logErfc((z0 - j) / (Math.SQRT2 * sigma));
    const logS0 = logT0 + (i * i - i) / (2 * sigma * sigma) + logE0;
    const logS1 = logT1 + (j * j - j) / (2 * sigma * sigma) + logE1;
    if (sign > 0) {
      logA0 = logAdd(logA0, logS0);
      logA1 = logAdd(logA1, logS1);
    } else {
      // With a huge sigma a term can round to the sum it is taken from (the remainder is far
      // below float64's resolution): keep the sum then, an upper bound (conservative).
      logA0 = logS0 < logA0 ? logSub(logA0, logS0) : logA0;
      logA1 = logS1 < logA1 ? logSub(logA1, logS1) : logA1;
    }
    if (Math.max(logS0, logS1) < -30) break;
  }
  return logAdd(logA0, logA1);
}

/** RDP of one Poisson-subsampled Gaussian step at order alpha > 1. */
export function gaussianRdp(q: number, sigma: number, alpha: number): number {
  if (q === 1) return alpha / (2 * sigma * sigma);
  if (Number.isInteger(alpha)) return logAInteger(q, sigma, alpha) / (alpha - 1);
  return logAFractional(q, sigma, alpha) / (alpha - 1);
}

/** Pure-DP epsilon of one Poisson-subsampled Laplace step: log(1 + q (e^{1/b} - 1)). */
export function laplaceStepEpsilon(q: number, b: number): number {
  return Math.log1p(q * Math.expm1(1 / b));
}

/** RDP of one step of either mechanism at order alpha. */
export function stepRdp(step: LedgerStepPrivacy, alpha: number): number {
  const noise = stepNoise(step);
  if (step.mechanism === "gaussian") return gaussianRdp(step.q, noise, alpha);
  const e = laplaceStepEpsilon(step.q, noise);
  return Math.min(e, (alpha * e * e) / 2);
}

/** Total RDP of a ledger at each order. */
export function ledgerRdp(groups: StepGroup[], orders: readonly number[] = DEFAULT_RDP_ORDERS) {
  return orders.map((alpha) => groups.reduce((s, g) => s + g.count * stepRdp(g.step, alpha), 0));
}

/** Improved RDP to (epsilon, delta) conversion (Balle et al. 2020, Prop. 12 / CKS 2020). */
export function rdpToEpsilon(
  rdp: readonly number[],
  delta: number,
  orders: readonly number[] = DEFAULT_RDP_ORDERS,
): { epsilon: number; order: number } {
  let best = { epsilon: Infinity, order: NaN };
  for (let i = 0; i < orders.length; i++) {
    const a = orders[i];
    const r = rdp[i];
    if (!Number.isFinite(r)) continue;
    const eps = r + Math.log1p(-1 / a) - (Math.log(delta) + Math.log(a)) / (a - 1);
    if (eps < best.epsilon) best = { epsilon: Math.max(0, eps), order: a };
  }
  return best;
}

/** Epsilon at delta of a ledger, by the RDP accountant. */
export function rdpEpsilon(
  groups: StepGroup[],
  delta: number,
  orders: readonly number[] = DEFAULT_RDP_ORDERS,
): { epsilon: number; order: number } {
  if (!(delta > 0 && delta < 1)) throw new RangeError(`delta must be in (0, 1), got ${delta}`);
  return rdpToEpsilon(ledgerRdp(groups, orders), delta, orders);
}
