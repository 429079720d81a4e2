/**
 * The private step's randomness: Poisson batches have mean q n, clipping bounds each unit's
 * contribution (an example, or the sum over a passage), and an empty batch still releases noise
 * divided by the expected batch size. The noise samplers: discrete_noise_test.ts.
 */
import { strict as assert } from "node:assert";
import { finiteDifferences, poissonSample, privatize } from "../src/dpzo/mechanism.ts";
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
  // Almost no noise (sigma D = 1e-6 units: always 0), a grid of C / 4: 0.5 and -0.25 are on it.
  const how = {
    private: true,
    mechanism: "gaussian",
    clip: 1,
    noiseMultiplier: 2.5e-7,
    gridUnits: 4,
    expectedBatchSize: 4,
  } as const;
  const est = privatize(Float64Array.of(5, 0.5, -0.25), how, insecureRandom(1));
  assert.equal(est.ghat, (1 + 0.5 - 0.25) / 4);
  assert.equal(est.sumUnits, 5);
  assert.equal(est.clippedFraction, 1 / 3);
  // Context units: the sum of a passage's g_i is clipped, not each g_i.
  const byPassage = privatize(Float64Array.of(0.75, 0.75, -0.25), how, insecureRandom(1), [2, 1]);
  assert.equal(byPassage.ghat, (1 - 0.25) / 4);
  assert.equal(byPassage.clippedFraction, 1 / 2);
  // Off the grid: stochastic rounding keeps the mean (0.3 C = 1.2 units: 1 or 2, mean 1.2).
  const rng = insecureRandom(3);
  let units = 0;
  for (let i = 0; i < 20000; i++) units += privatize(Float64Array.of(0.3), how, rng).sumUnits!;
  assert.ok(Math.abs(units / 20000 - 1.2) < 0.02, `mean units ${units / 20000}`);
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
    gridUnits: 2048,
    expectedBatchSize: 16,
  } as const;
  const ghats = Array.from({ length: 20000 }, () => privatize(new Float64Array(0), how, rng).ghat);
  const m = moments(ghats);
  const sd = (2 * 0.05) / 16;
  // noise, not 0: a zero only as often as the discrete Gaussian's mass at 0 (~1e-4 here)
  const zeros = ghats.filter((v) => v === 0).length;
  assert.ok(zeros < 20000 / (Math.sqrt(2 * Math.PI) * 2 * 2048) * 8 + 3, `${zeros} zeros`);
  assert.ok(
    Math.abs(Math.sqrt(m.variance) / sd - 1) < 0.03,
    `std ${Math.sqrt(m.variance)} vs ${sd}`,
  );
});
