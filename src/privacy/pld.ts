/**
 * Tight numerical accountant: privacy loss distributions (PLD) composed by FFT.
 *
 * Method (Koskela, Jalko and Honkela 2020; Gopi, Lee and Wutschitz 2021, "PRV accountant";
 * Doroshenko, Ghazi, Kamath, Kumar and Manurangsi 2022, "connect the dots", as in Google's
 * dp_accounting):
 *
 * 1. Each step's privacy loss L (see mechanisms.ts) is put on the grid l_k = k h.
 *    Pessimistic: the mass of L in (l_k, l_k+1] is split between the two end points so that
 *    E[exp(-L)] is kept (connect-the-dots). This is a mean-preserving spread of exp(-L), and
 *    delta(eps) = E[(1 - e^eps exp(-L))_+] is convex in exp(-L), so by Jensen every composed
 *    delta can only grow: an upper bound. Mass below the grid is moved up to its first point,
 *    mass above it is moved to +infinity (counted in full in delta).
 *    Optimistic: the hockey-stick curve delta as a function of y = e^eps is convex; every grid
 *    value is lowered by the largest gap between the chord and the tangents of the adjacent
 *    cells, and the lower convex hull of those points is the delta curve of a discrete pair
 *    that is dominated by the true one (a lower bound, used to report the discretisation
 *    error).
 * 2. The T-fold composition is the T-th power of the pmf's discrete Fourier transform on a
 *    window chosen with a Chernoff bound (moment generating function of the discrete pmf).
 *    Mass outside the window wraps around; its size is bounded by the Chernoff tail, which is
 *    added to delta (pessimistic) or subtracted from it (optimistic).
 * 3. Groups of identical steps (same mechanism, q, noise) are exponentiated separately and
 *    multiplied in the Fourier domain: a ledger is composed as it was run. Remove and add
 *    neighbours are composed separately; the reported epsilon is the worse of the two.
 *
 * Not covered by the bound: float64 round-off of the FFT (~1e-13 per grid point).
 */
import { fft, nextPowerOfTwo } from "./fft.ts";
import { type LedgerStepPrivacy, type PrivacyLoss, stepLosses, stepNoise } from "./mechanisms.ts";

/** `count` identical steps. */
export interface StepGroup {
  step: LedgerStepPrivacy;
  count: number;
}

/** Group identical steps (same mechanism, q and noise): composition does not depend on order. */
export function groupSteps(steps: readonly LedgerStepPrivacy[]): StepGroup[] {
  return mergeGroups(steps.map((step) => ({ step, count: 1 })));
}

/** Merge groups of identical steps, adding their counts. */
export function mergeGroups(groups: readonly StepGroup[]): StepGroup[] {
  const merged = new Map<string, StepGroup>();
  for (const { step, count } of groups) {
    const noise = stepNoise(step);
    const key = `${step.mechanism}|${step.q}|${noise}|${step.gridUnits ?? "continuous"}`;
    const g = merged.get(key);
    if (g) g.count += count;
    else {
      const copy: LedgerStepPrivacy = step.mechanism === "gaussian"
        ? { mechanism: "gaussian", q: step.q, sigma: noise }
        : { mechanism: "laplace", q: step.q, b: noise };
      if (step.gridUnits !== undefined) copy.gridUnits = step.gridUnits;
      merged.set(key, { step: copy, count });
    }
  }
  return [...merged.values()];
}

export interface PldOptions {
  /** Probability mass the truncations may move, per direction; default min(1e-14, 1e-4 delta). */
  tailMass?: number;
  /** Target FFT length (power of two); default 2^18. */
  fftSize?: number;
  /** Also compute the optimistic lower estimate (for the error report); default true. */
  bounds?: boolean;
}

/** A discrete (sub-)distribution of the loss on the grid k h, k = kMin .. kMin + length - 1. */
interface DiscreteLoss {
  /** The grid is offset + k h. */
  offset: number;
  kMin: number;
  masses: Float64Array;
  /** Mass at +infinity. */
  infMass: number;
  /** How far the optimistic curve may exceed the true one (0 for pessimistic). */
  violation: number;
}

/** A composed loss distribution over the window K = kLo .. kLo + masses.length - 1. */
export interface ComposedLoss {
  h: number;
  /** The window's losses are offset + K h. */
  offset: number;
  kLo: number;
  masses: Float64Array;
  infMass: number;
  /** Bound on the wrapped-around and truncated mass: add to delta (pessimistic) or subtract. */
  slack: number;
  pessimistic: boolean;
}

const MAX_FFT = 1 << 22;
const COARSE_BINS = 2000;

function lambdaGrid(): number[] {
  const out: number[] = [];
  for (let e = -4; e <= 4.0001; e += 0.1) out.push(10 ** e);
  return out;
}
const LAMBDAS = lambdaGrid();

/** Smallest l with P(L > l) <= tau. */
function upperCut(loss: PrivacyLoss, tau: number): number {
  if (Number.isFinite(loss.upper)) return loss.upper;
  let a = Number.isFinite(loss.lower) ? loss.lower : 0;
  let step = 1;
  while (loss.tails(a).sfP <= tau) {
    a -= step;
    step *= 2;
  }
  let b = a + 1;
  step = 1;
  while (loss.tails(b).sfP > tau) {
    step *= 2;
    b = a + step;
  }
  for (let i = 0; i < 200 && b - a > 1e-15 * Math.max(1, Math.abs(b)); i++) {
    const mid = 0.5 * (a + b);
    if (loss.tails(mid).sfP > tau) a = mid;
    else b = mid;
  }
  return b;
}

/** Largest l with P(L <= l) <= tau. */
function lowerCut(loss: PrivacyLoss, tau: number): number {
  if (Number.isFinite(loss.lower)) return loss.lower;
  let b = Number.isFinite(loss.upper) ? loss.upper : 0;
  let step = 1;
  while (loss.tails(b).cdfP <= tau) {
    b += step;
    step *= 2;
  }
  let a = b - 1;
  step = 1;
  while (loss.tails(a).cdfP > tau) {
    step *= 2;
    a = b - step;
  }
  for (let i = 0; i < 200 && b - a > 1e-15 * Math.max(1, Math.abs(a)); i++) {
    const mid = 0.5 * (a + b);
    if (loss.tails(mid).cdfP > tau) b = mid;
    else a = mid;
  }
  return a;
}

/** P-mass and Q-mass of L in each cell (l_i, l_i+1], from tails at the grid points. */
function cellMasses(
  cdfP: Float64Array,
  sfP: Float64Array,
  cdfQ: Float64Array,
  sfQ: Float64Array,
  i: number,
): [number, number] {
  const a = cdfP[i] < 0.5 ? cdfP[i + 1] - cdfP[i] : sfP[i] - sfP[i + 1];
  const b = cdfQ[i] < 0.5 ? cdfQ[i + 1] - cdfQ[i] : sfQ[i] - sfQ[i + 1];
  return [Math.max(0, a), Math.max(0, b)];
}

/** log sum_i exp(logMasses_i + lambda values_i), masses given as logs (-Infinity for 0). */
function logSumExpMgf(values: Float64Array, logMasses: Float64Array, lambda: number): number {
  let m = -Infinity;
  for (let i = 0; i < values.length; i++) m = Math.max(m, logMasses[i] + lambda * values[i]);
  if (m === -Infinity) return -Infinity;
  let s = 0;
  for (let i = 0; i < values.length; i++) {
    if (logMasses[i] !== -Infinity) s += Math.exp(logMasses[i] + lambda * values[i] - m);
  }
  return m + Math.log(s);
}

function logs(masses: Float64Array): Float64Array {
  return masses.map((m) => (m > 0 ? Math.log(m) : -Infinity));
}

interface Support {
  loss: PrivacyLoss;
  count: number;
  lo: number;
  hi: number;
}

/**
 * Coarse Chernoff window of the composed loss (loss units), from cell-rounded distributions
 * (values rounded up for the upper tail, down for the lower tail: the bounds stay valid).
 */
function coarseWindow(supports: Support[], tau: number): { lo: number; hi: number } {
  const parts = supports.map(({ loss, count, lo, hi }) => {
    const n = COARSE_BINS;
    const w = (hi - lo) / n;
    const up = new Float64Array(n + 1);
    const down = new Float64Array(n + 1);
    const masses = new Float64Array(n + 1);
    const t = Array.from({ length: n + 1 }, (_, i) => loss.tails(i === n ? hi : lo + i * w));
    masses[0] = t[0].cdfP;
    up[0] = lo;
    down[0] = lo;
    for (let i = 0; i < n; i++) {
      masses[i + 1] = Math.max(
        0,
        t[i].cdfP < 0.5 ? t[i + 1].cdfP - t[i].cdfP : t[i].sfP - t[i + 1].sfP,
      );
      up[i + 1] = lo + (i + 1) * w;
      down[i + 1] = lo + i * w;
    }
    return { count, up, down, masses: logs(masses) };
  });
  const logTau = Math.log(tau);
  let hi = supports.reduce((s, x) => s + x.count * x.hi, 0);
  let lo = supports.reduce((s, x) => s + x.count * x.lo, 0);
  for (const lambda of LAMBDAS) {
    let su = 0;
    let sd = 0;
    for (const p of parts) {
      su += p.count * logSumExpMgf(p.up, p.masses, lambda);
      sd += p.count * logSumExpMgf(p.down, p.masses, -lambda);
    }
    hi = Math.min(hi, (su - logTau) / lambda);
    lo = Math.max(lo, -(sd - logTau) / lambda);
  }
  return { lo, hi };
}

/** Read the tails of a loss at the grid points kMin .. kMax. */
function gridTails(loss: PrivacyLoss, h: number, offset: number, kMin: number, kMax: number) {
  const n = kMax - kMin + 1;
  const cdfP = new Float64Array(n);
  const sfP = new Float64Array(n);
  const cdfQ = new Float64Array(n);
  const sfQ = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const t = loss.tails(offset + (kMin + i) * h);
    cdfP[i] = t.cdfP;
    sfP[i] = t.sfP;
    cdfQ[i] = t.cdfQ;
    sfQ[i] = t.sfQ;
  }
  return { cdfP, sfP, cdfQ, sfQ };
}

/** Connect-the-dots (pessimistic) discretisation on k h, k in [kMin, kMax]. */
function discretisePessimistic(
  loss: PrivacyLoss,
  h: number,
  offset: number,
  kMin: number,
  kMax: number,
): DiscreteLoss {
  const { cdfP, sfP, cdfQ, sfQ } = gridTails(loss, h, offset, kMin, kMax);
  const n = kMax - kMin + 1;
  const masses = new Float64Array(n);
  masses[0] = cdfP[0];
  const spread = -Math.expm1(-h);
  for (let i = 0; i + 1 < n; i++) {
    const [a, b] = cellMasses(cdfP, sfP, cdfQ, sfQ, i);
    if (a === 0) continue;
    // split a between l_i and l_i+1 keeping the Q-mass b: a_up e^{-l_i+1} + a_lo e^{-l_i} = b
    let upper = (a - Math.exp(offset + (kMin + i) * h) * b) / spread;
    upper = Math.min(a, Math.max(0, upper));
    masses[i + 1] += upper;
    masses[i] += a - upper;
  }
  return { offset, kMin, masses, infMass: sfP[n - 1], violation: 0 };
}

/**
 * Tangent-hull (optimistic) discretisation on offset + k h, k in [kMin, kMax]. Each grid value
 * of the delta curve (in y = e^eps) is lowered to the smaller of the tangents taken at the
 * (geometric) midpoints of its two cells, so each chord lies below a tangent, hence below the
 * curve; the lower convex hull of these points is a valid, dominated delta curve.
 */
export function discretiseOptimistic(
  loss: PrivacyLoss,
  h: number,
  offset: number,
  kMin: number,
  kMax: number,
): DiscreteLoss {
  const n = kMax - kMin + 1;
  const y = new Float64Array(n);
  for (let i = 0; i < n; i++) y[i] = Math.exp(offset + (kMin + i) * h);
  // tangent at the midpoint of cell c = (l_c-1, l_c): value fm, slope dm, at ym; cell 0 is
  // the one left of the grid (it carries the curve down to y = 0)
  const fm = new Float64Array(n);
  const dm = new Float64Array(n);
  const ym = new Float64Array(n);
  for (let c = 0; c < n; c++) {
    const l = offset + (kMin + c - 0.5) * h;
    ym[c] = Math.exp(l);
    fm[c] = loss.delta(l);
    dm[c] = -loss.tails(l).sfQ;
  }
  const tangent = (c: number, at: number) => fm[c] + dm[c] * (at - ym[c]);
  let violation = 0;
  const g = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let v = tangent(i, y[i]);
    if (i + 1 < n) v = Math.min(v, tangent(i + 1, y[i]));
    if (i === n - 1) {
      // the curve of a finite pmf is 0 beyond its last atom
      violation = Math.max(violation, -v);
      v = 0;
    } else if (v < 0) {
      violation = Math.max(violation, -v);
      v = 0;
    }
    g[i] = v;
  }
  // lower convex hull of (0, intercept of the first tangent), (y_i, g_i); index -1 = intercept
  const px = (j: number) => (j < 0 ? 0 : y[j]);
  const py = (j: number) => (j < 0 ? Math.min(1, tangent(0, 0)) : g[j]);
  const hull: number[] = [-1];
  for (let j = 0; j < n; j++) {
    while (hull.length >= 2) {
      const o = hull[hull.length - 2];
      const a = hull[hull.length - 1];
      const cross = (px(a) - px(o)) * (py(j) - py(o)) - (py(a) - py(o)) * (px(j) - px(o));
      if (cross <= 0) hull.pop();
      else break;
    }
    hull.push(j);
  }
  const masses = new Float64Array(n);
  for (let v = 1; v < hull.length; v++) {
    const j = hull[v];
    const p = hull[v - 1];
    const sLeft = (py(j) - py(p)) / (px(j) - px(p));
    const sRight = v + 1 < hull.length ? (py(hull[v + 1]) - py(j)) / (px(hull[v + 1]) - px(j)) : 0;
    masses[j] = Math.max(0, y[j] * (sRight - sLeft));
  }
  return { offset, kMin, masses, infMass: 0, violation };
}

/** log E[exp(lambda k h)] of each part, for the lambdas asked. */
function discreteLogMgfs(p: DiscreteLoss, h: number, lambdas: number[]): number[] {
  const values = new Float64Array(p.masses.length);
  for (let i = 0; i < values.length; i++) values[i] = (p.kMin + i) * h;
  const lm = logs(p.masses);
  return lambdas.map((lambda) => logSumExpMgf(values, lm, lambda));
}

/** At most 4096 bins of a discrete loss, values rounded up (`up`) or down (`down`). */
function binLoss(p: DiscreteLoss, h: number) {
  const len = p.masses.length;
  const width = Math.max(1, Math.ceil(len / 4096));
  const nb = Math.ceil(len / width);
  const up = new Float64Array(nb);
  const down = new Float64Array(nb);
  const masses = new Float64Array(nb);
  for (let i = 0; i < len; i++) masses[Math.floor(i / width)] += Math.max(0, p.masses[i]);
  for (let j = 0; j < nb; j++) {
    down[j] = (p.kMin + j * width) * h;
    up[j] = (p.kMin + Math.min(len - 1, (j + 1) * width - 1)) * h;
  }
  return { up, down, masses: logs(masses) };
}

/**
 * Compose discrete losses by exponentiation in the Fourier domain, on a window chosen by the
 * Chernoff bound tau on each side.
 */
function compose(
  parts: { loss: DiscreteLoss; count: number }[],
  h: number,
  tau: number,
  pessimistic: boolean,
): ComposedLoss {
  let kMinSum = 0;
  let kMaxSum = 0;
  for (const { loss, count } of parts) {
    kMinSum += count * loss.kMin;
    kMaxSum += count * (loss.kMin + loss.masses.length - 1);
  }
  // Chernoff window on the discrete distributions: search lambda on binned copies (values
  // rounded outwards, so every bound found is valid), then evaluate at the best lambda exactly
  const logTau = Math.log(tau);
  const scale = Math.max(1e-300, (kMaxSum - kMinSum) * h);
  const binned = parts.map(({ loss, count }) => ({ count, ...binLoss(loss, h) }));
  let bestUp = { t: Infinity, lambda: NaN };
  let bestDown = { t: -Infinity, lambda: NaN };
  for (let e = -3; e <= 5.0001; e += 0.125) {
    const lambda = 10 ** e / scale;
    let su = 0;
    let sd = 0;
    for (const b of binned) {
      su += b.count * logSumExpMgf(b.up, b.masses, lambda);
      sd += b.count * logSumExpMgf(b.down, b.masses, -lambda);
    }
    const tu = (su - logTau) / lambda;
    const td = -(sd - logTau) / lambda;
    if (tu < bestUp.t) bestUp = { t: tu, lambda };
    if (td > bestDown.t) bestDown = { t: td, lambda };
  }
  let tHi = Infinity;
  let tLo = -Infinity;
  if (Number.isFinite(bestUp.lambda) && Number.isFinite(bestDown.lambda)) {
    let su = 0;
    let sd = 0;
    for (const { loss, count } of parts) {
      const [u, d] = discreteLogMgfs(loss, h, [bestUp.lambda, -bestDown.lambda]);
      su += count * u;
      sd += count * d;
    }
    tHi = (su - logTau) / bestUp.lambda;
    tLo = -(sd - logTau) / bestDown.lambda;
  }
  let kHi = kMaxSum;
  let tauHi = 0;
  if (Number.isFinite(tHi) && Math.ceil(tHi / h) < kMaxSum) {
    kHi = Math.ceil(tHi / h);
    tauHi = tau;
  }
  let kLo = kMinSum;
  let tauLo = 0;
  if (Number.isFinite(tLo) && Math.floor(tLo / h) > kMinSum) {
    kLo = Math.floor(tLo / h);
    tauLo = tau;
  }
  if (kHi < kLo) kHi = kLo;
  const n = nextPowerOfTwo(kHi - kLo + 1);
  if (n > MAX_FFT) {
    throw new RangeError(`PLD window needs an FFT of ${n} points (max ${MAX_FFT}); coarser grid`);
  }
  const mod = (k: number) => ((k % n) + n) % n;
  let accRe: Float64Array | undefined;
  let accIm: Float64Array | undefined;
  let logNoInf = 0;
  let violation = 0;
  let offset = 0;
  for (const { loss, count } of parts) {
    const re = new Float64Array(n);
    const im = new Float64Array(n);
    for (let i = 0; i < loss.masses.length; i++) re[mod(loss.kMin + i)] += loss.masses[i];
    fft(re, im);
    for (let k = 0; k < n; k++) {
      const r2 = re[k] * re[k] + im[k] * im[k];
      const logMag = count * 0.5 * Math.log(r2);
      if (r2 === 0 || logMag < -745) {
        re[k] = 0;
        im[k] = 0;
        continue;
      }
      const mag = Math.exp(logMag);
      const ang = count * Math.atan2(im[k], re[k]);
      re[k] = mag * Math.cos(ang);
      im[k] = mag * Math.sin(ang);
    }
    if (accRe === undefined || accIm === undefined) {
      accRe = re;
      accIm = im;
    } else {
      for (let k = 0; k < n; k++) {
        const r = accRe[k] * re[k] - accIm[k] * im[k];
        accIm[k] = accRe[k] * im[k] + accIm[k] * re[k];
        accRe[k] = r;
      }
    }
    logNoInf += count * Math.log1p(-loss.infMass);
    offset += count * loss.offset;
    violation += count * loss.violation;
  }
  if (accRe === undefined || accIm === undefined) throw new RangeError("compose: no steps");
  fft(accRe, accIm, true);
  const masses = new Float64Array(n);
  for (let j = 0; j < n; j++) masses[j] = accRe[mod(kLo + j)];
  return {
    h,
    offset,
    kLo,
    masses,
    infMass: -Math.expm1(logNoInf),
    slack: pessimistic ? tauHi : tauHi + tauLo + violation,
    pessimistic,
  };
}

/** delta(eps) of a composed loss distribution, as the bound it stands for. */
export function composedDelta(c: ComposedLoss, eps: number): number {
  let s = 0;
  const { masses, kLo, h } = c;
  for (let j = masses.length - 1; j >= 0; j--) {
    const l = c.offset + (kLo + j) * h;
    if (l <= eps) break;
    s += masses[j] * -Math.expm1(eps - l);
  }
  const d = s + c.infMass + (c.pessimistic ? c.slack : -c.slack);
  return Math.min(1, Math.max(0, d));
}

/** Smallest eps >= 0 with composedDelta(c, eps) <= delta (Infinity when none). */
export function composedEpsilon(c: ComposedLoss, delta: number): number {
  const target = delta - c.infMass - (c.pessimistic ? c.slack : -c.slack);
  if (target <= 0) return Infinity;
  const { masses, kLo, h } = c;
  const n = masses.length;
  const decay = Math.exp(-h);
  // scan down: s = sum_{j' > j} m, e = sum_{j' > j} m e^{(j - j') h}
  let s = 0;
  let e = 0;
  let jStar = -1;
  for (let j = n - 1; j >= 0; j--) {
    if (j < n - 1) {
      s += masses[j + 1];
      e = decay * (masses[j + 1] + e);
    }
    if (s - e > target) {
      jStar = j + 1;
      break;
    }
  }
  let a: number;
  let b: number;
  let ref: number;
  if (jStar === -1) {
    // even at the bottom of the window delta is below target: all atoms are above eps
    ref = c.offset + kLo * h;
    a = 0;
    b = 0;
    for (let j = 0; j < n; j++) {
      a += masses[j];
      b += masses[j] * Math.exp(-j * h);
    }
  } else {
    ref = c.offset + (kLo + jStar) * h;
    a = 0;
    b = 0;
    for (let j = jStar; j < n; j++) {
      a += masses[j];
      b += masses[j] * Math.exp((jStar - j) * h);
    }
  }
  if (a - target <= 0 || b <= 0) return 0;
  return Math.max(0, ref + Math.log((a - target) / b));
}

/**
 * Grid spacing and per-group truncated supports for one direction. A Laplace loss has atoms at
 * both ends of its support; when the ledger has one Laplace group, the grid is shifted and
 * its spacing shrunk so that both atoms are grid points (errors then stay second order).
 */
function plan(
  groups: StepGroup[],
  direction: 0 | 1,
  tau: number,
  fftSize: number,
): { h: number; supports: (Support & { offset: number })[] } {
  const total = groups.reduce((s, g) => s + g.count, 0);
  const tauStep = tau / Math.max(1, total);
  const supports = groups.map((g) => {
    const loss = stepLosses(g.step)[direction];
    const lo = lowerCut(loss, tauStep);
    let hi = upperCut(loss, tauStep);
    if (!(hi > lo)) hi = lo + 1e-9;
    return { loss, count: g.count, lo, hi, offset: 0, laplace: g.step.mechanism === "laplace" };
  });
  const maxAbs = supports.reduce((m, s) => Math.max(m, Math.abs(s.lo), Math.abs(s.hi)), 0);
  if (maxAbs > 700) {
    throw new RangeError(
      "privacy loss range too wide for the PLD accountant (noise too small); use --accountant rdp",
    );
  }
  const w = coarseWindow(supports, tau);
  let h = Math.max(w.hi - w.lo, 1e-12) / (0.8 * fftSize);
  for (const s of supports) h = Math.max(h, (s.hi - s.lo) / (4 * fftSize));
  const laplace = supports.filter((s) => s.laplace);
  if (laplace.length === 1) {
    const s = laplace[0];
    h = (s.hi - s.lo) / Math.ceil((s.hi - s.lo) / h);
    s.offset = s.lo - Math.floor(s.lo / h) * h;
  }
  return { h, supports };
}

/** The composed loss distribution of a ledger in one direction. */
export function composeDirection(
  groups: StepGroup[],
  direction: 0 | 1,
  pessimistic: boolean,
  opts: { tailMass: number; fftSize: number },
): ComposedLoss {
  const { h, supports } = plan(groups, direction, opts.tailMass, opts.fftSize);
  const parts = supports.map((s) => {
    const { offset } = s;
    let kMin = Math.floor((s.lo - offset) / h);
    while (offset + kMin * h > s.lo) kMin--;
    let kMax = Math.max(kMin + 1, Math.ceil((s.hi - offset) / h));
    while (offset + kMax * h < s.hi) kMax++;
    const loss = pessimistic
      ? discretisePessimistic(s.loss, h, offset, kMin, kMax)
      : discretiseOptimistic(s.loss, h, offset, kMin, kMax);
    return { loss, count: s.count };
  });
  return compose(parts, h, opts.tailMass, pessimistic);
}

export interface TightEpsilon {
  /** Upper bound on epsilon (pessimistic discretisation). */
  epsilon: number;
  /** Lower estimate (optimistic discretisation); NaN when bounds were not requested. */
  epsilonLower: number;
  /** epsilon - epsilonLower: the discretisation error. */
  error: number;
  delta: number;
  /** Grid spacing of the worse direction. */
  grid: number;
  /** Which neighbouring relation attains the bound. */
  direction: "remove" | "add";
}

function resolve(delta: number, opts: PldOptions) {
  return {
    tailMass: opts.tailMass ?? Math.min(1e-14, 1e-4 * delta),
    fftSize: opts.fftSize ?? 1 << 18,
  };
}

function checkGroups(groups: StepGroup[]): void {
  if (groups.length === 0) throw new RangeError("no steps to account");
  for (const g of groups) {
    stepNoise(g.step);
    if (!(Number.isInteger(g.count) && g.count > 0)) {
      throw new RangeError(`step count must be a positive integer, got ${g.count}`);
    }
  }
}

/** Epsilon at the given delta, by the PLD accountant, with its discretisation error. */
export function pldEpsilon(
  groups: StepGroup[],
  delta: number,
  opts: PldOptions = {},
): TightEpsilon {
  checkGroups(groups);
  if (!(delta > 0 && delta < 1)) throw new RangeError(`delta must be in (0, 1), got ${delta}`);
  const o = resolve(delta, opts);
  const remove = composeDirection(groups, 0, true, o);
  const add = composeDirection(groups, 1, true, o);
  const eR = composedEpsilon(remove, delta);
  const eA = composedEpsilon(add, delta);
  const dir: 0 | 1 = eR >= eA ? 0 : 1;
  const epsilon = Math.max(eR, eA);
  let epsilonLower = NaN;
  if (opts.bounds ?? true) {
    epsilonLower = Number.isFinite(epsilon)
      ? Math.min(epsilon, composedEpsilon(composeDirection(groups, dir, false, o), delta))
      : Infinity;
  }
  return {
    epsilon,
    epsilonLower,
    error: Number.isFinite(epsilon) ? epsilon - epsilonLower : NaN,
    delta,
    grid: (dir === 0 ? remove : add).h,
    direction: dir === 0 ? "remove" : "add",
  };
}

/** Delta at the given epsilon, by the PLD accountant: an upper bound and a lower estimate. */
export function pldDelta(
  groups: StepGroup[],
  epsilon: number,
  opts: PldOptions = {},
): { delta: number; deltaLower: number } {
  checkGroups(groups);
  const o = resolve(1e-10, opts);
  const dR = composedDelta(composeDirection(groups, 0, true, o), epsilon);
  const dA = composedDelta(composeDirection(groups, 1, true, o), epsilon);
  const dir: 0 | 1 = dR >= dA ? 0 : 1;
  const deltaLower = opts.bounds ?? true
    ? composedDelta(composeDirection(groups, dir, false, o), epsilon)
    : NaN;
  return { delta: Math.max(dR, dA), deltaLower };
}
