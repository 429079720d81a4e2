/**
 * The privatizing step of DP-ZO: per-example finite differences, clipping, noise, and the
 * released scalar.
 *
 *   g_i  = (L+_i - L-_i) / (2 phi)
 *   G    = sum_i clip(g_i, -C, C) + noise    noise ~ N(0, (sigma C)^2) or Laplace(b C)
 *   ghat = G / (q n)                          (the EXPECTED batch size, never the actual one)
 *
 * An empty Poisson batch still releases noise / (q n). The non-private mode (MeZO) uses the
 * plain batch mean of g_i.
 */
import type { SecretRandom } from "./randomness.ts";

export type Mechanism = "gaussian" | "laplace";

/** A standard normal from two uniforms (Box-Muller, float64). */
export function standardNormal(rng: SecretRandom): number {
  return Math.sqrt(-2 * Math.log(rng.uniform())) * Math.cos(2 * Math.PI * rng.uniform());
}

/** A Laplace(0, scale) draw by inversion. */
export function laplace(rng: SecretRandom, scale: number): number {
  const u = rng.uniform() - 0.5;
  return -scale * Math.sign(u) * Math.log(1 - 2 * Math.abs(u));
}

export type Privatization =
  | { private: false }
  | {
    private: true;
    mechanism: Mechanism;
    /** Clipping threshold C on each g_i. */
    clip: number;
    /** Gaussian noise multiplier sigma (std sigma * C) or Laplace scale multiplier b (scale b * C). */
    noiseMultiplier: number;
    /** q * n. */
    expectedBatchSize: number;
  };

export interface PrivateEstimate {
  ghat: number;
  /** Fraction of examples whose |g_i| exceeded C (0 when not private or the batch is empty). */
  clippedFraction: number;
  /** Mean of |g_i| before clipping. */
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

/** The released scalar ghat from the per-example g_i. */
export function privatize(g: Float64Array, how: Privatization, rng: SecretRandom): PrivateEstimate {
  let absSum = 0;
  for (const v of g) absSum += Math.abs(v);
  const meanAbsG = g.length ? absSum / g.length : 0;
  if (!how.private) {
    let sum = 0;
    for (const v of g) sum += v;
    return { ghat: g.length ? sum / g.length : 0, clippedFraction: 0, meanAbsG };
  }
  const C = how.clip;
  let sum = 0, clipped = 0;
  for (const v of g) {
    if (Math.abs(v) > C) clipped++;
    sum += Math.min(C, Math.max(-C, v));
  }
  const noise = how.mechanism === "gaussian"
    ? how.noiseMultiplier * C * standardNormal(rng)
    : laplace(rng, how.noiseMultiplier * C);
  return {
    ghat: (sum + noise) / how.expectedBatchSize,
    clippedFraction: g.length ? clipped / g.length : 0,
    meanAbsG,
  };
}

/** Poisson sampling: each of n examples is in the batch independently with probability q. */
export function poissonSample(n: number, q: number, rng: SecretRandom): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) if (rng.uniform() < q) out.push(i);
  return out;
}
