/**
 * Pure epsilon-DP accounting for the Poisson-subsampled Laplace mechanism.
 *
 * A step adds Laplace(b C) noise to a sum of values clipped to [-C, C]: eps0 = 1/b. Poisson
 * subsampling with rate q amplifies it to log(1 + q (e^{eps0} - 1)) under add/remove-one
 * neighbours (Li, Qardaji and Su 2012; Balle, Barthe and Gaboardi 2018), and pure DP composes
 * by addition, which is exact at delta = 0 for this mechanism (the worst loss of each step has
 * positive probability). For delta > 0 the PLD accountant (pld.ts) gives a tighter epsilon.
 */
import type { StepGroup } from "./pld.ts";
import { laplaceStepEpsilon } from "./rdp.ts";
import { stepNoise } from "./mechanisms.ts";

export { laplaceStepEpsilon };

/** Pure-DP epsilon of a ledger: the sum of the amplified per-step epsilons (Infinity when a
 * Gaussian step is present: the Gaussian mechanism has no pure-DP guarantee). */
export function laplacePureEpsilon(groups: readonly StepGroup[]): number {
  let eps = 0;
  for (const g of groups) {
    const b = stepNoise(g.step);
    if (g.step.mechanism !== "laplace") return Infinity;
    eps += g.count * laplaceStepEpsilon(g.step.q, b);
  }
  return eps;
}

/** Smallest Laplace scale b (exact, not rounded) with T log(1 + q (e^{1/b} - 1)) <= epsilon. */
export function laplaceScaleForEpsilon(q: number, steps: number, epsilon: number): number {
  if (!(q > 0 && q <= 1) || !(steps >= 1) || !(epsilon > 0)) {
    throw new RangeError("laplaceScaleForEpsilon needs q in (0, 1], steps >= 1, epsilon > 0");
  }
  return 1 / Math.log1p(Math.expm1(epsilon / steps) / q);
}
