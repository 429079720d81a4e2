/**
 * Tests of the seeded perturbation direction: Philox4x32-10 known answers (Random123
 * kat_vectors), the committed z test vectors (bit-exact), slicing, and statistical quality
 * (moments, Kolmogorov-Smirnov and chi-square against N(0,1), independence across lanes, names
 * and seeds) with fixed seeds.
 */
import { strict as assert } from "node:assert";
import {
  boxMullerPair,
  fillZ,
  nameHash,
  philox4x32_10,
  radius,
  seedKey,
  zAt,
} from "../src/rng/mod.ts";

interface Vectors {
  fnv1a64: Record<string, string>;
  philox4x32_10_kat: { ctr: string[]; key: string[]; out: string[] }[];
  vectors: { seed: string; name: string; indices: number[]; values: number[]; bits: string[] }[];
  box_muller_pairs: { a: string; c: string; values: number[] }[];
}

const V: Vectors = JSON.parse(
  Deno.readTextFileSync(new URL("./vectors/z_vectors.json", import.meta.url)),
);

const hex = (x: number) => (x >>> 0).toString(16).padStart(8, "0");
const f32bits = (x: number) => hex(new Uint32Array(new Float32Array([x]).buffer)[0]);

Deno.test("philox4x32_10 reproduces the Random123 known-answer vectors", () => {
  const out = new Uint32Array(4);
  for (const { ctr, key, out: want } of V.philox4x32_10_kat) {
    const [c0, c1, c2, c3] = ctr.map((h) => parseInt(h, 16));
    const [k0, k1] = key.map((h) => parseInt(h, 16));
    philox4x32_10(c0, c1, c2, c3, k0, k1, out);
    assert.deepEqual([...out].map(hex), want);
  }
});

Deno.test("name hash is FNV-1a 64 of the UTF-8 name", () => {
  for (const [name, want] of Object.entries(V.fnv1a64)) {
    const [lo, hi] = nameHash(name);
    assert.equal(hex(hi) + hex(lo), want);
  }
});

Deno.test("z reproduces the committed test vectors bit for bit", () => {
  let count = 0;
  for (const v of V.vectors) {
    v.indices.forEach((index, j) => {
      const got = zAt(BigInt(v.seed), v.name, index);
      assert.equal(f32bits(got), v.bits[j], `z(${v.seed}, ${v.name}, ${index})`);
      assert.ok(Object.is(got, v.values[j]));
      // The same element inside a range that starts elsewhere.
      const buf = new Float32Array(7);
      const start = Math.max(0, index - 3);
      fillZ(buf, BigInt(v.seed), v.name, start);
      assert.equal(f32bits(buf[index - start]), v.bits[j]);
      count++;
    });
  }
  assert.equal(count, 96);
});

Deno.test("Box-Muller pair edge cases match the vectors", () => {
  const d = new Float32Array(2);
  for (const { a, c, values } of V.box_muller_pairs) {
    boxMullerPair(parseInt(a, 16), parseInt(c, 16), d, 0);
    assert.deepEqual([d[0], d[1]], values, `pair(${a}, ${c})`);
  }
});

Deno.test("spec's ln and sin/cos approximations are accurate far below float32 resolution", () => {
  let maxR = 0;
  for (let i = 0; i < 200000; i++) {
    const a = Math.imul(i, 0x9e3779b9) >>> 0;
    const want = Math.sqrt(-2 * Math.log(((a | 1) >>> 0) / 4294967296));
    maxR = Math.max(maxR, Math.abs(radius(a) - want) / want);
  }
  assert.ok(maxR < 1e-11, `radius rel err ${maxR}`);
  assert.ok(Math.abs(radius(0) - Math.sqrt(2 * 32 * Math.LN2)) < 1e-12);
  const d = new Float32Array(2);
  for (let i = 0; i < 200000; i++) {
    const c = Math.imul(i, 0x85ebca6b) >>> 0;
    const a = 0x80000000; // r = sqrt(2 ln 2)
    boxMullerPair(a, c, d, 0);
    const r = radius(a), t = (2 * Math.PI * (c + 0.5)) / 4294967296;
    assert.ok(Math.abs(d[0] - r * Math.cos(t)) < 2e-7 && Math.abs(d[1] - r * Math.sin(t)) < 2e-7);
    assert.ok(d[0] !== 0 && d[1] !== 0);
  }
});

Deno.test("any slice equals the same part of the whole range", () => {
  const seed = 0xdeadbeefcafef00dn, name = "model.decoder.layers.3.fc1.weight";
  const whole = new Float32Array(10007);
  fillZ(whole, seed, name, 0);
  for (const [s, e] of [[0, 1], [1, 2], [3, 9], [5, 6], [4095, 4101], [7, 10007], [9999, 10007]]) {
    const part = new Float32Array(e - s);
    fillZ(part, seed, name, s);
    assert.deepEqual(part, whole.subarray(s, e), `slice [${s}, ${e})`);
  }
  for (const i of [0, 17, 4096, 10006]) assert.equal(zAt(seed, name, i), whole[i]);
  // Large indices (block counter beyond 32 bits) are reachable alone and by range.
  const big = 2 ** 40 + 5;
  const r = new Float32Array(6);
  fillZ(r, seed, name, big - 2);
  assert.equal(r[2], zAt(seed, name, big));
});

Deno.test("z rejects seeds and starts outside their domain", () => {
  assert.throws(() => seedKey(-1n), RangeError);
  assert.throws(() => seedKey(1n << 64n), RangeError);
  assert.throws(() => fillZ(new Float32Array(1), 1n, "x", -1), RangeError);
  assert.throws(() => fillZ(new Float32Array(1), 1n, "x", 0.5), RangeError);
  assert.deepEqual(seedKey((1n << 64n) - 1n), [0xffffffff, 0xffffffff]);
});

// ---- statistics (fixed seeds, so these tests are deterministic) ----

const N = 1_000_000;

function draws(seed: bigint, name: string, start = 0): Float32Array {
  const z = new Float32Array(N);
  fillZ(z, seed, name, start);
  return z;
}

/** Standard normal CDF via the Numerical Recipes erfcc Chebyshev fit (abs. error < 1.2e-7). */
function phi(x: number): number {
  const z = Math.abs(x) / Math.SQRT2;
  const t = 1 / (1 + 0.5 * z);
  const r = t * Math.exp(
    -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
                  t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
                                  t * (-0.82215223 + t * 0.17087277)))))))),
  );
  return x >= 0 ? 1 - r / 2 : r / 2;
}

function correlation(a: Float32Array, b: Float32Array): number {
  let sa = 0, sb = 0, sab = 0, saa = 0, sbb = 0;
  for (let i = 0; i < a.length; i++) {
    sa += a[i];
    sb += b[i];
    sab += a[i] * b[i];
    saa += a[i] * a[i];
    sbb += b[i] * b[i];
  }
  const n = a.length;
  const cov = sab / n - (sa / n) * (sb / n);
  return cov / Math.sqrt((saa / n - (sa / n) ** 2) * (sbb / n - (sb / n) ** 2));
}

Deno.test("z moments of 1e6 draws match N(0, 1)", () => {
  const z = draws(0x0123456789abcdefn, "model.decoder.embed_tokens.weight");
  let m1 = 0;
  for (const x of z) m1 += x;
  m1 /= N;
  let m2 = 0, m3 = 0, m4 = 0, tail3 = 0;
  for (const x of z) {
    const d = x - m1;
    m2 += d * d;
    m3 += d * d * d;
    m4 += d * d * d * d;
    if (Math.abs(x) > 3) tail3++;
  }
  m2 /= N;
  m3 /= N;
  m4 /= N;
  const skew = m3 / m2 ** 1.5, exKurt = m4 / (m2 * m2) - 3;
  // Bounds: 5 standard errors (se: 1/sqrt N, sqrt(2/N), sqrt(6/N), sqrt(24/N)).
  assert.ok(Math.abs(m1) < 0.005, `mean ${m1}`);
  assert.ok(Math.abs(m2 - 1) < 0.0071, `variance ${m2}`);
  assert.ok(Math.abs(skew) < 0.0123, `skew ${skew}`);
  assert.ok(Math.abs(exKurt) < 0.025, `excess kurtosis ${exKurt}`);
  // P(|z| > 3) = 0.0026998; binomial sd ~ 52.
  assert.ok(Math.abs(tail3 - 2699.8) < 260, `tail count ${tail3}`);
});

Deno.test("z passes Kolmogorov-Smirnov and chi-square tests against N(0, 1)", () => {
  const z = Float64Array.from(draws(42n, "model.decoder.layers.0.self_attn.q_proj.weight"));
  z.sort();
  let d = 0;
  for (let i = 0; i < N; i++) {
    const f = phi(z[i]);
    d = Math.max(d, (i + 1) / N - f, f - i / N);
  }
  // Critical value at alpha = 0.001: 1.949 / sqrt(N).
  assert.ok(d * Math.sqrt(N) < 1.949, `KS statistic sqrt(N) D = ${d * Math.sqrt(N)}`);

  const bins = 200;
  const counts = new Float64Array(bins);
  for (const x of z) counts[Math.min(bins - 1, Math.floor(phi(x) * bins))]++;
  let chi2 = 0;
  const expected = N / bins;
  for (const c of counts) chi2 += (c - expected) ** 2 / expected;
  // 199 degrees of freedom: the 0.999 quantile is about 267.
  assert.ok(chi2 < 267, `chi-square ${chi2}`);
  assert.ok(chi2 > 140, `chi-square suspiciously small ${chi2}`);
});

Deno.test("z is uncorrelated across names, seeds, lanes and neighbouring blocks", () => {
  const bound = 5 / Math.sqrt(N);
  const a = draws(7n, "model.decoder.layers.1.fc1.weight");
  const b = draws(7n, "model.decoder.layers.1.fc2.weight");
  const c = draws(8n, "model.decoder.layers.1.fc1.weight");
  const d = draws(7n, "model.decoder.layers.1.fc1.weight", N); // next stretch of the same stream
  for (const [label, x, y] of [["names", a, b], ["seeds", a, c], ["stretch", a, d]] as const) {
    const r = correlation(x, y);
    assert.ok(Math.abs(r) < bound, `correlation across ${label}: ${r}`);
  }
  // Within a block: lanes 0/1 share a Box-Muller pair, lanes 1/2 come from different pairs;
  // also lane i against lane i+4 (next block), and squares (dependence beyond correlation).
  const h = N / 4;
  for (const [p, q] of [[0, 1], [1, 2], [2, 3], [0, 4], [3, 5]]) {
    const x = new Float32Array(h - 1), y = new Float32Array(h - 1);
    const x2 = new Float32Array(h - 1), y2 = new Float32Array(h - 1);
    for (let i = 0; i < h - 1; i++) {
      x[i] = a[4 * i + p];
      y[i] = a[4 * i + q];
      x2[i] = x[i] * x[i];
      y2[i] = y[i] * y[i];
    }
    const b2 = 5 / Math.sqrt(h);
    assert.ok(Math.abs(correlation(x, y)) < b2, `lanes ${p},${q}`);
    assert.ok(Math.abs(correlation(x2, y2)) < b2, `squared lanes ${p},${q}`);
  }
});
