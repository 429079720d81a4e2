/**
 * The private step's randomness: Gaussian and Laplace noise have the right variance, Poisson
 * batches have mean q n, clipping bounds each example's contribution, and an empty batch still
 * releases noise divided by the expected batch size.
 */
import { strict as assert } from "node:assert";
import {
  finiteDifferences,
  laplace,
  poissonSample,
  privatize,
  standardNormal,
} from "../src/dpzo/mechanism.ts";
import { cryptoRandom, insecureRandom } from "../src/dpzo/randomness.ts";

function moments(xs: number[]): { mean: number; variance: number } {
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  const variance = xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (xs.length - 1);
  return { mean, variance };
}

Deno.test("the secret generator is the OS CSPRNG; the seeded one says it is insecure", () => {
  assert.equal(cryptoRandom().insecure, false);
  assert.equal(insecureRandom(1).insecure, true);
  const a = insecureRandom(7), b = insecureRandom(7);
  assert.equal(a.u64(), b.u64(), "seeded stream is reproducible");
  const c = cryptoRandom();
  assert.notEqual(c.u64(), c.u64());
});

Deno.test("uniforms lie in (0, 1) with mean 1/2 and variance 1/12", () => {
  for (const rng of [cryptoRandom(), insecureRandom(3)]) {
    const xs = Array.from({ length: 100000 }, () => rng.uniform());
    assert.ok(xs.every((x) => x > 0 && x < 1));
    const m = moments(xs);
    assert.ok(Math.abs(m.mean - 0.5) < 0.005, `mean ${m.mean}`);
    assert.ok(Math.abs(m.variance - 1 / 12) < 0.002, `variance ${m.variance}`);
  }
});

Deno.test("Gaussian noise: mean 0, variance 1 (over 200k draws, both generators)", () => {
  for (const rng of [cryptoRandom(), insecureRandom(11)]) {
    const m = moments(Array.from({ length: 200000 }, () => standardNormal(rng)));
    // Standard errors: mean 1/sqrt(n) = 0.0022, variance sqrt(2/n) = 0.0032.
    assert.ok(Math.abs(m.mean) < 0.012, `mean ${m.mean}`);
    assert.ok(Math.abs(m.variance - 1) < 0.016, `variance ${m.variance}`);
  }
});

Deno.test("Laplace noise of scale b: mean 0, variance 2 b^2", () => {
  const b = 0.7;
  for (const rng of [cryptoRandom(), insecureRandom(12)]) {
    const m = moments(Array.from({ length: 200000 }, () => laplace(rng, b)));
    // Standard error of the variance: sqrt((24 b^4 - 4 b^4) / n) = b^2 * 0.01.
    assert.ok(Math.abs(m.mean) < 0.02, `mean ${m.mean}`);
    assert.ok(Math.abs(m.variance - 2 * b * b) < 5 * 0.01 * b * b, `variance ${m.variance}`);
  }
});

Deno.test("Poisson batches have mean q n and variance n q (1 - q)", () => {
  const n = 1000, q = 0.016, rng = cryptoRandom();
  const sizes = Array.from({ length: 3000 }, () => poissonSample(n, q, rng).length);
  const m = moments(sizes);
  const expectedVar = n * q * (1 - q);
  assert.ok(Math.abs(m.mean - q * n) < 5 * Math.sqrt(expectedVar / sizes.length), `mean ${m.mean}`);
  assert.ok(Math.abs(m.variance - expectedVar) < 0.15 * expectedVar, `variance ${m.variance}`);
  const one = poissonSample(n, q, rng);
  assert.ok(
    one.every((i, k) => Number.isInteger(i) && i >= 0 && i < n && (k === 0 || i > one[k - 1])),
  );
});

Deno.test("clipping bounds each g_i to [-C, C] and ghat divides by the expected batch size", () => {
  const g = finiteDifferences([1.0, 0.5, 0.7], [0.9, 0.5, 0.8], 0.01); // 5, 0, -5
  assert.deepEqual([...g].map((v) => Math.round(v * 1e9) / 1e9), [5, 0, -5]);
  const how = {
    private: true,
    mechanism: "gaussian",
    clip: 1,
    noiseMultiplier: 1e-12,
    expectedBatchSize: 4,
  } as const;
  const est = privatize(Float64Array.of(5, 0.5, -0.25), how, insecureRandom(1));
  assert.ok(Math.abs(est.ghat - (1 + 0.5 - 0.25) / 4) < 1e-9, `ghat ${est.ghat}`);
  assert.equal(est.clippedFraction, 1 / 3);
  const nonPrivate = privatize(
    Float64Array.of(5, 0.5, -0.25),
    { private: false },
    insecureRandom(1),
  );
  assert.ok(Math.abs(nonPrivate.ghat - 5.25 / 3) < 1e-12, "MeZO: the plain batch mean");
});

Deno.test("an empty batch still releases noise / (q n), with the noise's variance", () => {
  const rng = cryptoRandom();
  const how = {
    private: true,
    mechanism: "gaussian",
    clip: 0.05,
    noiseMultiplier: 2,
    expectedBatchSize: 16,
  } as const;
  const ghats = Array.from({ length: 20000 }, () => privatize(new Float64Array(0), how, rng).ghat);
  const m = moments(ghats);
  const sd = (2 * 0.05) / 16;
  assert.ok(ghats.every((v) => v !== 0));
  assert.ok(
    Math.abs(Math.sqrt(m.variance) / sd - 1) < 0.03,
    `std ${Math.sqrt(m.variance)} vs ${sd}`,
  );
});
