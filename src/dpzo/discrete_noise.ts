/**
 * Exact integer noise: the discrete Laplace and the discrete Gaussian, sampled with integer
 * arithmetic only (Canonne, Kamath and Steinke 2020, "The Discrete Gaussian for Differential
 * Privacy", Algorithms 1-3). No floating-point number is ever computed on the way, so the
 * released value carries no rounding pattern of a float sampler (Mironov 2012): the noise is an
 * integer, drawn from exactly the distribution the accountant assumes.
 *
 * The parameters are exact rationals. A double is one (`exactRational`): sigma = 1.234 is the
 * binary value 1.2339999999999999857891452847979962825775146484375, and that is the sigma the
 * sampler uses, to the last bit.
 *
 *   Bernoulli(n/d)        U uniform in {0..d-1}, return U < n
 *   Bernoulli(exp(-g))    for g in [0,1]: draw A_k ~ Bernoulli(g/k), k = 1, 2, ... until A_k = 0;
 *                         return 1 when that k is odd; for g > 1: floor(g) Bernoulli(exp(-1))
 *                         then Bernoulli(exp(-(g - floor g)))
 *   Lap_Z(t/s)            P(x) proportional to exp(-|x| s/t)
 *   N_Z(0, sigma^2)       P(x) proportional to exp(-x^2 / (2 sigma^2)), by rejection from
 *                         Lap_Z(floor(sigma) + 1)
 *
 * Random bits come from a `SecretRandom`: the CSPRNG, or with `insecure_seed` the seeded stream
 * (reproducible, not private).
 */
import type { SecretRandom } from "./randomness.ts";

/** A non-negative rational n/d (d > 0). */
export interface Rational {
  n: bigint;
  d: bigint;
}

/** The exact value of a finite double x >= 0 as n / 2^k. */
export function exactRational(x: number): Rational {
  if (!(x >= 0) || !Number.isFinite(x)) throw new RangeError(`exactRational: ${x}`);
  let k = 0n, v = x;
  // Doubling is exact; at most 1074 + 52 steps reach an integer.
  while (!Number.isInteger(v)) {
    v *= 2;
    k++;
  }
  return { n: BigInt(v), d: 1n << k };
}

function bitLength(m: bigint): number {
  return m.toString(2).length;
}

/** A uniform integer in {0, ..., m - 1} (m >= 1), by rejection from whole 64-bit words. */
export function uniformBelow(rng: SecretRandom, m: bigint): bigint {
  if (m <= 0n) throw new RangeError("uniformBelow: m must be >= 1");
  if (m === 1n) return 0n;
  const bits = bitLength(m - 1n);
  const words = Math.ceil(bits / 64);
  const mask = (1n << BigInt(bits)) - 1n;
  for (;;) {
    let v = 0n;
    for (let i = 0; i < words; i++) v = (v << 64n) | rng.u64();
    v &= mask;
    if (v < m) return v;
  }
}

/** Bernoulli(n/d), 0 <= n <= d. */
export function bernoulli(rng: SecretRandom, n: bigint, d: bigint): boolean {
  return uniformBelow(rng, d) < n;
}

/** Bernoulli(exp(-n/d)) for n/d >= 0 (CKS20 Algorithm 1). */
export function bernoulliExp(rng: SecretRandom, n: bigint, d: bigint): boolean {
  if (n < 0n || d <= 0n) throw new RangeError("bernoulliExp: needs n >= 0, d > 0");
  if (n > d) {
    for (let i = n / d; i > 0n; i--) if (!bernoulliExp(rng, 1n, 1n)) return false;
    return bernoulliExp(rng, n % d, d);
  }
  let k = 1n;
  while (bernoulli(rng, n, d * k)) k++;
  return k % 2n === 1n;
}

/**
 * Lap_Z(t/s): P(x) proportional to exp(-|x| s / t), for integers s, t >= 1 (CKS20 Algorithm 2).
 */
export function discreteLaplace(rng: SecretRandom, t: bigint, s: bigint = 1n): bigint {
  if (t < 1n || s < 1n) throw new RangeError("discreteLaplace: needs s, t >= 1");
  for (;;) {
    const u = uniformBelow(rng, t);
    if (!bernoulliExp(rng, u, t)) continue;
    let v = 0n;
    while (bernoulliExp(rng, 1n, 1n)) v++;
    const y = (u + t * v) / s;
    const negative = bernoulli(rng, 1n, 2n);
    if (negative && y === 0n) continue;
    return negative ? -y : y;
  }
}

function isqrt(n: bigint): bigint {
  if (n < 2n) return n;
  let x = BigInt(Math.floor(Math.sqrt(Number(n))));
  while (x * x > n) x--;
  while ((x + 1n) * (x + 1n) <= n) x++;
  return x;
}

/**
 * N_Z(0, sigma^2) with sigma^2 = n/d (CKS20 Algorithm 3): Y ~ Lap_Z(t), t = floor(sigma) + 1,
 * accepted with probability exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2)).
 */
export function discreteGaussian(rng: SecretRandom, sigma2: Rational): bigint {
  const { n, d } = sigma2;
  if (n <= 0n || d <= 0n) throw new RangeError("discreteGaussian: needs sigma^2 > 0");
  const t = isqrt(n / d) + 1n;
  // (|Y| - sigma^2/t)^2 / (2 sigma^2) = (|Y| t d - n)^2 / (2 n d t^2)
  const den = 2n * n * d * t * t;
  for (;;) {
    const y = discreteLaplace(rng, t);
    const a = (y < 0n ? -y : y) * t * d - n;
    if (bernoulliExp(rng, a * a, den)) return y;
  }
}

/**
 * The noise of a private step, in grid units: a discrete Gaussian of standard deviation
 * parameter `noise * gridUnits` (sigma C on a grid of C / gridUnits), or a discrete Laplace of
 * scale `noise * gridUnits` (b C). `noise` is used at its exact binary value.
 */
export function gridNoise(
  rng: SecretRandom,
  mechanism: "gaussian" | "laplace",
  noise: number,
  gridUnits: number,
): number {
  const r = exactRational(noise);
  const scaled = { n: r.n * BigInt(gridUnits), d: r.d };
  const y = mechanism === "gaussian"
    ? discreteGaussian(rng, { n: scaled.n * scaled.n, d: scaled.d * scaled.d })
    : discreteLaplace(rng, scaled.n, scaled.d);
  return Number(y);
}
