/**
 * The exact integer samplers (src/dpzo/discrete_noise.ts) against their distributions: chi-square
 * goodness of fit to the exact pmf, mean, variance and tails, for the CSPRNG and the seeded
 * generator; Bernoulli(exp(-g)) and uniform integers; and the released sums of a private step
 * are integers on the grid.
 */
import { strict as assert } from "node:assert";
import {
  bernoulliExp,
  discreteGaussian,
  discreteLaplace,
  exactRational,
  gridNoise,
  uniformBelow,
} from "../src/dpzo/discrete_noise.ts";
import { privatize, releasedGhat } from "../src/dpzo/mechanism.ts";
import { cryptoRandom, insecureRandom, type SecretRandom } from "../src/dpzo/randomness.ts";

const generators = (): [string, SecretRandom][] => [
  ["CSPRNG", cryptoRandom()],
  ["seeded", insecureRandom(2020)],
];

/** Exact pmf on [-K, K] of a symmetric distribution with unnormalised weight w(|x|). */
function pmf(w: (x: number) => number, K: number): Map<number, number> {
  let z = 0;
  for (let x = -K; x <= K; x++) z += w(Math.abs(x));
  const out = new Map<number, number>();
  for (let x = -K; x <= K; x++) out.set(x, w(Math.abs(x)) / z);
  return out;
}

/**
 * Chi-square statistic of `draws` against `p`, over bins of expected count >= 10 (the tails
 * pooled into two end bins); returns it with the degrees of freedom.
 */
function chiSquare(draws: number[], p: Map<number, number>): { stat: number; df: number } {
  const n = draws.length;
  const xs = [...p.keys()].sort((a, b) => a - b);
  const bins: { lo: number; hi: number; e: number }[] = [];
  let cur = { lo: -Infinity, hi: -Infinity, e: 0 };
  for (const x of xs) {
    cur.hi = x;
    cur.e += n * p.get(x)!;
    if (cur.e >= 10) {
      bins.push(cur);
      cur = { lo: x + 1, hi: x + 1, e: 0 };
    }
  }
  bins[bins.length - 1].hi = Infinity; // the rest joins the last bin
  bins[bins.length - 1].e += cur.e;
  const counts = new Array(bins.length).fill(0);
  for (const d of draws) {
    const i = bins.findIndex((b) => d >= b.lo && d <= b.hi);
    counts[i === -1 ? (d < 0 ? 0 : bins.length - 1) : i]++;
  }
  let stat = 0;
  bins.forEach((b, i) => (stat += (counts[i] - b.e) ** 2 / b.e));
  return { stat, df: bins.length - 1 };
}

/** Upper 1e-5 quantile of chi-square(df) (Wilson-Hilferty): a false alarm once in 10^5 runs. */
function chiCritical(df: number): number {
  const z = 4.265;
  return df * (1 - 2 / (9 * df) + z * Math.sqrt(2 / (9 * df))) ** 3;
}

function moments(xs: number[]) {
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  const variance = xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (xs.length - 1);
  return { mean, variance };
}

const N = 20000;

Deno.test("discrete Gaussian: the exact pmf (chi-square), mean 0, its variance, its tails", () => {
  for (const sigma of [0.8, 3.7, 40]) {
    const s2 = exactRational(sigma * sigma);
    const p = pmf((x) => Math.exp(-(x * x) / (2 * sigma * sigma)), Math.ceil(12 * sigma) + 2);
    let variance = 0, tail = 0;
    for (const [x, px] of p) {
      variance += x * x * px;
      if (Math.abs(x) > 2 * sigma) tail += px;
    }
    for (const [name, rng] of generators()) {
      const draws = Array.from({ length: N }, () => Number(discreteGaussian(rng, s2)));
      assert.ok(draws.every(Number.isInteger));
      const { stat, df } = chiSquare(draws, p);
      assert.ok(stat < chiCritical(df), `${name} sigma=${sigma}: chi2 ${stat} on ${df} df`);
      const m = moments(draws);
      const se = Math.sqrt(variance / N);
      assert.ok(Math.abs(m.mean) < 5 * se, `${name} sigma=${sigma}: mean ${m.mean}`);
      // the variance's standard error is about sqrt(2/N) of it
      assert.ok(
        Math.abs(m.variance / variance - 1) < 5 * Math.sqrt(2 / N),
        `${name} sigma=${sigma}: variance ${m.variance} vs ${variance}`,
      );
      const seen = draws.filter((x) => Math.abs(x) > 2 * sigma).length / N;
      assert.ok(
        Math.abs(seen - tail) < 5 * Math.sqrt((tail * (1 - tail)) / N),
        `${name} sigma=${sigma}: P(|X| > 2 sigma) ${seen} vs ${tail}`,
      );
    }
  }
});

Deno.test("discrete Laplace: the exact pmf (chi-square), mean 0, variance 2r/(1-r)^2", () => {
  for (const [t, s] of [[3n, 1n], [57n, 10n]] as const) {
    const scale = Number(t) / Number(s);
    const p = pmf((x) => Math.exp(-x / scale), Math.ceil(40 * scale));
    const r = Math.exp(-1 / scale);
    const variance = (2 * r) / (1 - r) ** 2;
    for (const [name, rng] of generators()) {
      const draws = Array.from({ length: N }, () => Number(discreteLaplace(rng, t, s)));
      const { stat, df } = chiSquare(draws, p);
      assert.ok(stat < chiCritical(df), `${name} scale ${scale}: chi2 ${stat} on ${df} df`);
      const m = moments(draws);
      assert.ok(Math.abs(m.mean) < 5 * Math.sqrt(variance / N), `${name}: mean ${m.mean}`);
      // the Laplace variance's standard error is about sqrt(5/N) of it
      assert.ok(Math.abs(m.variance / variance - 1) < 5 * Math.sqrt(5 / N), `${name}: var`);
    }
  }
});

Deno.test("Bernoulli(exp(-g)) and uniform integers are exact in distribution", () => {
  const rng = cryptoRandom();
  for (const [n, d] of [[3n, 10n], [17n, 10n], [5n, 3n], [0n, 1n]] as const) {
    const p = Math.exp(-Number(n) / Number(d));
    const hits = Array.from({ length: N }, () => bernoulliExp(rng, n, d)).filter((b) => b).length;
    const se = Math.sqrt((p * (1 - p)) / N) || 1e-9;
    assert.ok(Math.abs(hits / N - p) <= 5 * se, `exp(-${n}/${d}): ${hits / N} vs ${p}`);
  }
  for (const m of [1n, 3n, 7n, 2n ** 64n + 1n]) {
    for (let i = 0; i < 200; i++) {
      const u = uniformBelow(rng, m);
      assert.ok(u >= 0n && u < m);
    }
  }
  const counts = [0, 0, 0];
  for (let i = 0; i < 30000; i++) counts[Number(uniformBelow(rng, 3n))]++;
  for (const c of counts) assert.ok(Math.abs(c - 10000) < 5 * Math.sqrt(30000 * (2 / 9)));
  assert.deepEqual(exactRational(0.1), { n: 3602879701896397n, d: 2n ** 55n });
});

Deno.test("the noise of a run: sigma D units wide on the grid, reproducible when seeded", () => {
  const sigma = 1.234, D = 3319; // gridUnits(1.234)
  for (const [name, rng] of generators()) {
    const draws = Array.from({ length: 5000 }, () => gridNoise(rng, "gaussian", sigma, D));
    const sd = Math.sqrt(moments(draws).variance);
    assert.ok(Math.abs(sd / (sigma * D) - 1) < 5 / Math.sqrt(2 * 5000), `${name}: sd ${sd}`);
  }
  const a = insecureRandom(9), b = insecureRandom(9);
  assert.deepEqual(
    Array.from({ length: 5 }, () => gridNoise(a, "laplace", 0.7, 5851)),
    Array.from({ length: 5 }, () => gridNoise(b, "laplace", 0.7, 5851)),
  );
});

Deno.test("a private step releases an integer on the grid; ghat is a fixed function of it", () => {
  const how = {
    private: true,
    mechanism: "gaussian",
    clip: 0.05,
    noiseMultiplier: 0.9,
    gridUnits: 4551,
    expectedBatchSize: 16,
  } as const;
  const rng = cryptoRandom();
  for (let i = 0; i < 200; i++) {
    const g = Float64Array.from({ length: i % 20 }, () => (rng.uniform() - 0.5) * 0.3);
    const est = privatize(g, how, rng);
    assert.ok(Number.isInteger(est.sumUnits), `sum ${est.sumUnits}`);
    assert.equal(est.ghat, releasedGhat(est.sumUnits!, 0.05, 4551, 16));
    // the noised sum is a multiple of the grid C / D
    const units = (est.ghat * 16) / (0.05 / 4551);
    assert.ok(Math.abs(units - Math.round(units)) < 1e-6, `${units}`);
  }
});
