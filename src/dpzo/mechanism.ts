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
 *
 * K > 1 directions (DP-AggZO, Bao et al. 2025; `privatizeDirections`): each unit has a K-vector
 * of finite differences, scaled by 1/K as the paper's code does (its released coordinates are
 * means over the K directions, and the update adds lr * ghat_k z_k for each k), clipped in L2,
 * rounded per coordinate, summed, and each coordinate gets its own N_Z(0, (sigma D)^2). The
 * integer vector's L2 sensitivity must stay at most D units: stochastic rounding moves each
 * coordinate by less than 1 unit, so by up to sqrt(K) units in L2; the clip radius is therefore
 * D - sqrt(K) units (C (1 - sqrt(K) / D), e.g. 0.05% below C at D = 4096, K = 4), and the rounded
 * vector's norm is below D. Laplace needs an L1 clip and is refused with K > 1 (config).
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

/** The clip radius, in grid units, of a K-vector: D - sqrt(K), so rounding stays within D. */
export function vectorClipUnits(gridUnits: number, directions: number): number {
  return gridUnits - Math.sqrt(directions);
}

/** The released K-vector of a step of K > 1 directions. */
export interface PrivateVectorEstimate {
  ghats: number[];
  /** The released noisy sums in grid units (private runs), one per direction. */
  sumUnits?: number[];
  /** Fraction of units whose ||v_u||_2 exceeded the clip radius. */
  clippedFraction: number;
  /** Mean of ||v_u||_2 before clipping (v_u scaled by 1/K). */
  meanAbsG: number;
}

/**
 * The released K-vector (ghat_1 .. ghat_K) from the per-example finite differences `g[k][i]`
 * of each direction k (module doc): v_u = (sum over the unit's examples of g_ik) / K, clipped
 * in L2 to (D - sqrt K) grid units, rounded per coordinate, summed, one discrete Gaussian per
 * coordinate. The noise draws follow the coordinates in order.
 */
export function privatizeDirections(
  g: readonly Float64Array[],
  how: Privatization,
  rng: SecretRandom,
  unitSizes?: readonly number[],
): PrivateVectorEstimate {
  const K = g.length, n = g[0].length;
  if (K < 2) throw new Error("privatizeDirections: needs K >= 2 directions (privatize for one)");
  const sizes = unitSizes ?? Array.from({ length: n }, () => 1);
  const v: Float64Array[] = [];
  let at = 0;
  for (const size of sizes) {
    const u = new Float64Array(K);
    for (let k = 0; k < K; k++) {
      let sum = 0;
      for (let i = 0; i < size; i++) sum += g[k][at + i];
      u[k] = sum / K;
    }
    v.push(u);
    at += size;
  }
  if (at !== n) throw new Error(`privatizeDirections: units cover ${at} of ${n} examples`);
  const norms = v.map(l2);
  const meanAbsG = v.length ? norms.reduce((a, x) => a + x, 0) / v.length : 0;
  if (!how.private) {
    const ghats = Array.from({ length: K }, (_, k) => {
      let sum = 0;
      for (const x of g[k]) sum += x / K;
      return n ? sum / n : 0;
    });
    return { ghats, clippedFraction: 0, meanAbsG };
  }
  if (how.mechanism !== "gaussian") {
    throw new Error("privatizeDirections: K > 1 directions need the Gaussian mechanism");
  }
  const C = how.clip, D = how.gridUnits;
  const units = new Array<number>(K).fill(0);
  let clipped = 0;
  for (const u of v) {
    const r = clipRoundVector(u, C, D, rng);
    if (r.clipped) clipped++;
    for (let k = 0; k < K; k++) units[k] += r.units[k];
  }
  for (let k = 0; k < K; k++) units[k] += gridNoise(rng, "gaussian", how.noiseMultiplier, D);
  return {
    ghats: units.map((x) => releasedGhat(x, C, D, how.expectedBatchSize)),
    sumUnits: units,
    clippedFraction: v.length ? clipped / v.length : 0,
    meanAbsG,
  };
}

function l2(u: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < u.length; i++) s += u[i] * u[i];
  return Math.sqrt(s);
}

/**
 * One unit's K-vector `u` in integer grid units (of C / D): scaled to L2 norm D - sqrt(K) units
 * when longer, then each coordinate stochastically rounded. The result's L2 norm is below D
 * (each coordinate moves by less than 1 unit), so adding or removing a unit shifts the integer
 * sum by at most D in L2: the sensitivity the accounting assumes.
 */
export function clipRoundVector(
  u: ArrayLike<number>,
  C: number,
  D: number,
  rng: SecretRandom,
): { units: number[]; clipped: boolean } {
  const K = u.length;
  const radius = vectorClipUnits(D, K);
  if (!(radius >= 1)) {
    throw new Error(`clipRoundVector: a grid of ${D} units is too coarse for ${K} directions`);
  }
  const len = (l2(u) / C) * D;
  const clipped = len > radius;
  const scale = clipped ? radius / len : 1;
  const units: number[] = [];
  for (let k = 0; k < K; k++) {
    const r = stochasticRound((u[k] / C) * D * scale, rng);
    units.push(Math.min(D, Math.max(-D, r))); // NaN (a non-finite loss) stays NaN
  }
  return { units, clipped };
}
