/**
 * Special functions for the privacy accountants, in float64 with `Math` only.
 *
 * `erfc` and the scaled `erfcx(x) = exp(x^2) erfc(x)` come from the incomplete gamma function
 * `Gamma(1/2, x^2)`: the power series of `gamma(1/2, t)` below `x^2 = 1.5` and the Lentz
 * continued fraction of `Gamma(1/2, t)` above it (Press et al., Numerical Recipes, 6.2).
 * Both converge to full double precision (relative error ~1e-15), also deep in the tail,
 * where `exp(-x^2)` underflows but `erfcx` and `logErfc` do not.
 */

const SQRT_PI = Math.sqrt(Math.PI);
const SQRT2 = Math.SQRT2;
const SERIES_LIMIT = Math.sqrt(1.5);

/** erf(x) for 0 <= x < sqrt(1.5) by the positive series of gamma(1/2, x^2). */
function erfSeries(x: number): number {
  const t = x * x;
  let term = 1;
  let sum = 1;
  for (let n = 1; n < 200; n++) {
    term *= (2 * t) / (2 * n + 1);
    sum += term;
    if (term < sum * 1e-17) break;
  }
  return (2 / SQRT_PI) * Math.exp(-t) * x * sum;
}

/** erfcx(x) for x >= sqrt(1.5) by the continued fraction of Gamma(1/2, x^2). */
function erfcxContinuedFraction(x: number): number {
  const t = x * x;
  const tiny = 1e-300;
  let b = t + 0.5;
  let c = 1 / tiny;
  let d = 1 / b;
  let h = d;
  for (let i = 1; i < 2000; i++) {
    const an = -i * (i - 0.5);
    b += 2;
    d = an * d + b;
    if (Math.abs(d) < tiny) d = tiny;
    c = b + an / c;
    if (Math.abs(c) < tiny) c = tiny;
    d = 1 / d;
    const del = d * c;
    h *= del;
    if (Math.abs(del - 1) < 2e-16) break;
  }
  return (x * h) / SQRT_PI;
}

/** Scaled complementary error function exp(x^2) erfc(x); finite for every x > -26. */
export function erfcx(x: number): number {
  if (Number.isNaN(x)) return NaN;
  if (x >= SERIES_LIMIT) return erfcxContinuedFraction(x);
  if (x >= 0) return Math.exp(x * x) * (1 - erfSeries(x));
  // erfc(-y) = 2 - erfc(y)
  return 2 * Math.exp(x * x) - erfcx(-x);
}

/** Complementary error function. */
export function erfc(x: number): number {
  if (Number.isNaN(x)) return NaN;
  if (x >= SERIES_LIMIT) return x > 27.3 ? 0 : Math.exp(-x * x) * erfcxContinuedFraction(x);
  if (x >= 0) return 1 - erfSeries(x);
  return 2 - erfc(-x);
}

/** Error function. */
export function erf(x: number): number {
  if (Math.abs(x) < SERIES_LIMIT) return x >= 0 ? erfSeries(x) : -erfSeries(-x);
  return x > 0 ? 1 - erfc(x) : erfc(-x) - 1;
}

/** log(erfc(x)), accurate also where erfc underflows. */
export function logErfc(x: number): number {
  if (x > 0) return Math.log(erfcx(x)) - x * x;
  return Math.log(erfc(x));
}

/** Standard normal survival function P(Z > z). */
export function normalSf(z: number): number {
  return 0.5 * erfc(z / SQRT2);
}

/** Standard normal distribution function P(Z <= z). */
export function normalCdf(z: number): number {
  return 0.5 * erfc(-z / SQRT2);
}

/** log P(Z > z), accurate in the far tail. */
export function logNormalSf(z: number): number {
  return Math.log(0.5) + logErfc(z / SQRT2);
}

/**
 * The Gaussian hockey-stick function H(a, mu) = Phibar(a - mu) - exp(a mu - mu^2/2) Phibar(a):
 * delta(eps) of the Gaussian mechanism N(mu, 1) vs N(0, 1) at the threshold a (Balle and Wang
 * 2018), computed without cancellation in the tail through erfcx.
 */
export function gaussianHockeyStick(a: number, mu: number): number {
  if (a - mu > 0) {
    const u = (a - mu) / SQRT2;
    const v = a / SQRT2;
    const diff = erfcx(u) - erfcx(v);
    return Math.max(0, 0.5 * Math.exp(-u * u) * diff);
  }
  return Math.max(0, normalSf(a - mu) - Math.exp(a * mu - 0.5 * mu * mu) * normalSf(a));
}

/** log(exp(a) + exp(b)) without overflow. */
export function logAdd(a: number, b: number): number {
  if (a === -Infinity) return b;
  if (b === -Infinity) return a;
  const m = Math.max(a, b);
  return m + Math.log1p(Math.exp(-Math.abs(a - b)));
}

/** log(exp(a) - exp(b)) for a >= b; -Infinity when equal. */
export function logSub(a: number, b: number): number {
  if (b === -Infinity) return a;
  if (a < b) throw new RangeError(`logSub: ${a} < ${b}`);
  if (a === b) return -Infinity;
  const d = b - a;
  return a + Math.log(-Math.expm1(d));
}
