/**
 * The privatizing step of DP-ZO: per-example finite differences, clipping, rounding to the grid,
 * integer noise, and the released scalar.
 *
 *   g_i  = (L+_i - L-_i) / (2 phi)
 *   v_u  = sum of g_i over the examples of privacy unit u (one example, or one passage)
 *   k_u  = round(clip(v_u, -C, C) / (C / D))     stochastic rounding: an integer in [-D, D]
 *   N    = sum_u k_u + Y                          Y ~ N_Z(0, (sigma D)^2) or Lap_Z(b D)
 *   ghat = N * (C / D) / (q n)                    (the EXPECTED batch size, never the actual one)
 *
 * Only the integer N leaves the step (ghat is a fixed function of it and public settings), so
 * no floating-point rounding of the noise can reveal the sum (Mironov 2012): the noise is added
 * in integers to an integer statistic whose sensitivity is D units (src/privacy/discrete.ts says
 * why that accounting is an upper bound). An empty Poisson batch still releases Y.
 *
 * The non-private mode (MeZO) releases the plain batch mean of g_i.
 */
import type { SecretRandom } from "./randomness.ts";
import { gridNoise } from "./discrete_noise.ts";

export type Mechanism = "gaussian" | "laplace";

export type Privatization =
  | { private: false }
  | {
    private: true;
    mechanism: Mechanism;
    /** Clipping threshold C on each unit's contribution. */
    clip: number;
    /** Gaussian noise multiplier sigma (std sigma * C) or Laplace scale multiplier b (b * C). */
    noiseMultiplier: number;
    /** D: C in grid units; the grid is C / D (src/privacy/discrete.ts, gridUnits). */
    gridUnits: number;
    /** q * n. */
    expectedBatchSize: number;
  };

export interface PrivateEstimate {
  ghat: number;
  /** The released noisy sum in grid units (private runs): ghat = sumUnits * (C / D) / (q n). */
  sumUnits?: number;
  /** Fraction of units whose |v_u| exceeded C (0 when not private or the batch is empty). */
  clippedFraction: number;
  /** Mean of |v_u| before clipping (of |g_i| when each example is its own unit). */
  meanAbsG: number;
}

/** Per-example projected gradients g_i = (L+_i - L-_i) / (2 phi). */
export function finiteDifferences(
  lossPlus: Float64Array | number[],
  lossMinus: Float64Array | number[],
  phi: number,
): Float64Array {
  const g = new Float64Array(lossPlus.length);
  for (let i = 0; i < g.length; i++) g[i] = (lossPlus[i] - lossMinus[i]) / (2 * phi);
  return g;
}

/** x rounded to floor(x) or floor(x) + 1, up with probability x - floor(x): unbiased. */
function stochasticRound(x: number, rng: SecretRandom): number {
  const f = Math.floor(x);
  return f + (rng.uniform() < x - f ? 1 : 0);
}

/**
 * The released scalar ghat from the per-example g_i. `unitSizes` groups consecutive g_i into
 * privacy units (the examples of one passage, in batch order); by default each example is one.
 */
export function privatize(
  g: Float64Array,
  how: Privatization,
  rng: SecretRandom,
  unitSizes?: readonly number[],
): PrivateEstimate {
  const sizes = unitSizes ?? Array.from(g, () => 1);
  const v: number[] = [];
  let at = 0;
  for (const size of sizes) {
    let sum = 0;
    for (let i = 0; i < size; i++) sum += g[at + i];
    v.push(sum);
    at += size;
  }
  if (at !== g.length) throw new Error(`privatize: units cover ${at} of ${g.length} examples`);
  let absSum = 0;
  for (const x of v) absSum += Math.abs(x);
  const meanAbsG = v.length ? absSum / v.length : 0;
  if (!how.private) {
    let sum = 0;
    for (const x of g) sum += x;
    return { ghat: g.length ? sum / g.length : 0, clippedFraction: 0, meanAbsG };
  }
  const C = how.clip, D = how.gridUnits;
  let units = 0, clipped = 0;
  for (const x of v) {
    if (Math.abs(x) > C) clipped++;
    const k = stochasticRound((Math.min(C, Math.max(-C, x)) / C) * D, rng);
    units += Math.min(D, Math.max(-D, k)); // NaN (a non-finite loss) stays NaN
  }
  units += gridNoise(rng, how.mechanism, how.noiseMultiplier, D);
  return {
    ghat: releasedGhat(units, C, D, how.expectedBatchSize),
    sumUnits: units,
    clippedFraction: v.length ? clipped / v.length : 0,
    meanAbsG,
  };
}

/** ghat of a released noisy sum: one fixed float expression (replay and checks use it too). */
export function releasedGhat(
  sumUnits: number,
  clip: number,
  gridUnits: number,
  expectedBatch: number,
): number {
  return (sumUnits * (clip / gridUnits)) / expectedBatch;
}

/** Poisson sampling: each of n items is in the batch independently with probability q. */
export function poissonSample(n: number, q: number, rng: SecretRandom): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) if (rng.uniform() < q) out.push(i);
  return out;
}
