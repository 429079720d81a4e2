/**
 * The weight store's half precision (src/model/weights.ts, src/model/half.ts): conversions,
 * stochastic rounding that is unbiased and replayable, a perturbation that never enters a half
 * store, and updates far below half an ulp that still move the weights on average.
 */
import { strict as assert } from "node:assert";
import { readWeight, roundingBits, type StorageDtype } from "../src/model/weights.ts";
import { narrowNearest, narrowStochastic, widen } from "../src/model/half.ts";
import { initBackend } from "../src/tensor/backend.ts";
import { openCheckpoint } from "../src/model/checkpoint.ts";
import { wholeModel } from "../src/model/opt.ts";
import { ensureStageFits, loadStage } from "../src/model/load.ts";
import { parseOptConfig } from "../src/model/config.ts";
import { applyPass, createStageWorker, handleControl } from "../cluster/worker.ts";
import { FIXTURES, missing } from "./fixtures.ts";
import { fillZ } from "../src/rng/z.ts";

await initBackend("wasm");

const HALF = ["bfloat16", "float16"] as const;

/** Deterministic pseudo-random values in [-scale, scale). */
function values(n: number, seed: number, scale = 1): Float32Array {
  let x = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    return (x / 2 ** 31 - 1) * scale;
  });
}

Deno.test("half values widen exactly and round to nearest even back to the same bits", () => {
  for (const dtype of HALF) {
    const bits = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const wide = new Float32Array(bits.length);
    widen(bits, dtype, wide);
    const back = new Uint16Array(bits.length);
    narrowNearest(wide, dtype, back);
    for (let i = 0; i < bits.length; i++) {
      if (Number.isNaN(wide[i])) assert.ok(Number.isNaN(widenOne(back[i], dtype)), `${i}`);
      else assert.equal(back[i], i, `${dtype} ${i.toString(16)}: ${wide[i]}`);
    }
    // Halfway cases go to the even neighbour; values beyond the range overflow to infinity.
    const one = widenOne(dtype === "bfloat16" ? 0x3f80 : 0x3c00, dtype);
    const ulp = widenOne(dtype === "bfloat16" ? 0x3f81 : 0x3c01, dtype) - one;
    const out = new Uint16Array(2);
    narrowNearest(Float32Array.of(one + ulp / 2, one + 1.5 * ulp), dtype, out);
    assert.equal(widenOne(out[0], dtype), one);
    assert.equal(widenOne(out[1], dtype), one + 2 * ulp);
  }
  const big = new Uint16Array(1);
  narrowNearest(Float32Array.of(1e6), "float16", big);
  assert.equal(widenOne(big[0], "float16"), Infinity);
});

/** The larger of the gaps between the half value `bits` and its two neighbours. */
function gapAt(bits: number, dtype: "bfloat16" | "float16"): number {
  const v = widenOne(bits, dtype);
  const gaps = [bits + 1, bits - 1].map((b) => Math.abs(widenOne(b & 0xffff, dtype) - v));
  return Math.max(...gaps.filter((g) => !Number.isNaN(g)));
}

function widenOne(bits: number, dtype: "bfloat16" | "float16"): number {
  const out = new Float32Array(1);
  widen(Uint16Array.of(bits), dtype, out);
  return out[0];
}

Deno.test("stochastic rounding picks a neighbour, unbiased, exact values unchanged", () => {
  for (const dtype of HALF) {
    // Values around 0.02 (a typical weight), some subnormal in float16, some exact halves.
    const n = 4000;
    const x = values(n, 5, 0.03);
    for (let i = 0; i < 40; i++) x[i] = (i - 20) * 1e-6; // float16 subnormals
    const exact = new Uint16Array(n);
    narrowNearest(x, dtype, exact);
    const exactValues = new Float32Array(n);
    widen(exact, dtype, exactValues);
    const trials = 400;
    const gaps = Float64Array.from(exact, (b) => gapAt(b, dtype));
    const sums = new Float64Array(n);
    const bits = new Uint32Array(n), out = new Uint16Array(n), got = new Float32Array(n);
    for (let t = 0; t < trials; t++) {
      crypto.getRandomValues(bits);
      narrowStochastic(x, dtype, bits, out);
      widen(out, dtype, got);
      for (let i = 0; i < n; i++) {
        // One of the two half values around x: a half value, less than one gap from x.
        if (!(Math.abs(got[i] - x[i]) < gaps[i])) assert.fail(`${dtype} ${x[i]}: ${got[i]}`);
        sums[i] += got[i];
      }
      narrowStochastic(exactValues, dtype, bits, out);
      assert.deepEqual(out, exact); // a value that is a half value stays
    }
    // Unbiased: the mean over trials is within a few standard errors of x (gap^2 / 4 bounds
    // the variance of one rounding), pooled over all elements.
    let z = 0;
    for (let i = 0; i < n; i++) {
      z += (sums[i] / trials - x[i]) / (gaps[i] / 2 / Math.sqrt(trials));
    }
    assert.ok(Math.abs(z / Math.sqrt(n)) < 4, `${dtype}: pooled z ${z / Math.sqrt(n)}`);
  }
});

Deno.test("rounding bits are a pure function of (seed, name, index), any piece alone", () => {
  const all = new Uint32Array(1003);
  roundingBits(77n, "w", 0, all);
  const piece = new Uint32Array(501);
  roundingBits(77n, "w", 301, piece);
  assert.deepEqual(piece, all.subarray(301, 802));
  // The WASM kernel's words equal the JS reference, across its capacity too.
  const reference = new Uint32Array(200_003);
  roundingBits(2n ** 63n + 5n, "layers.0.fc1.weight", 7, reference, "js");
  const fast = new Uint32Array(200_003);
  roundingBits(2n ** 63n + 5n, "layers.0.fc1.weight", 7, fast);
  assert.deepEqual(fast, reference);
  const other = new Uint32Array(1003);
  roundingBits(78n, "w", 0, other);
  assert.notDeepEqual(other, all);
  roundingBits(77n, "v", 0, other);
  assert.notDeepEqual(other, all);
  // Uniform: each of 16 bins of the top 4 bits holds about 1/16 of 1003 * 64 words.
  const many = new Uint32Array(64 * 1003);
  roundingBits(5n, "x", 0, many);
  const bins = new Array(16).fill(0);
  for (const w of many) bins[w >>> 28]++;
  const expected = many.length / 16;
  const chi2 = bins.reduce((s, b) => s + (b - expected) ** 2 / expected, 0);
  assert.ok(chi2 < 40, `chi-square ${chi2} with 15 degrees of freedom`);
});

/** tiny-opt stored at `dtype`, training `only` (default: every tensor). */
async function halfWorker(dtype: StorageDtype, only?: string) {
  const ckpt = await openCheckpoint(`${FIXTURES}/tiny-opt`);
  const stage = await loadStage(ckpt, wholeModel(ckpt.config), dtype);
  return createStageWorker(stage, only ? [only] : stage.specs.map((s) => s.name));
}

Deno.test({
  name: "a half store never takes a perturbation: +phi, -2 phi and an abort leave its bits",
  ignore: missing(`${FIXTURES}/tiny-opt`),
  async fn() {
    for (const dtype of HALF) {
      const w = await halfWorker(dtype);
      const name = "model.decoder.layers.0.fc1.weight";
      const before = Uint16Array.from(w.stage.weights.get(name) as Uint16Array);
      const plain = Float32Array.from(readWeight(w.stage, name));
      handleControl(w, { type: "step.begin", step: 1, seed: "123", phi: 1e-3 });
      // The forward sees theta + phi z, computed in float32 ...
      const perturbed = Float32Array.from(readWeight(w.stage, name));
      assert.ok(perturbed.some((v, i) => v !== plain[i]));
      assert.deepEqual(w.stage.weights.get(name), before); // ... and the store is untouched
      handleControl(w, { type: "step.flip", step: 1 });
      handleControl(w, { type: "step.abort", step: 1 });
      assert.deepEqual(w.stage.weights.get(name), before);
      assert.equal(w.stage.virtual, undefined);
      assert.deepEqual(readWeight(w.stage, name), plain);
    }
  },
});

Deno.test({
  name: "half updates far below half an ulp still move the weights, by the right amount",
  ignore: missing(`${FIXTURES}/tiny-opt`),
  async fn() {
    for (const dtype of HALF) {
      const name = "model.decoder.layers.1.fc2.weight";
      const w = await halfWorker(dtype, name);
      const start = Float32Array.from(readWeight(w.stage, name));
      // 40 steps with updates c z(seed) of ~1e-3 of an ulp each: with round to nearest every
      // one would vanish; stochastic rounding moves each weight by sum c z on average.
      const c = 2e-7, steps = 40;
      const total = new Float64Array(start.length), z = new Float32Array(start.length);
      for (let s = 1; s <= steps; s++) {
        applyPass(w, BigInt(s), c, true);
        fillZ(z, BigInt(s), name, 0);
        for (let i = 0; i < z.length; i++) total[i] += Math.fround(c * z[i]);
      }
      const end = readWeight(w.stage, name);
      let moved = 0, dot = 0, norm = 0;
      for (let i = 0; i < start.length; i++) {
        if (end[i] !== start[i]) moved++;
        dot += (end[i] - start[i]) * total[i];
        norm += total[i] * total[i];
      }
      assert.ok(moved > start.length / 50, `${dtype}: only ${moved} weights moved`);
      // The regression of the change on the updates estimates 1 (unbiased rounding).
      const along = dot / norm;
      assert.ok(Math.abs(along - 1) < 0.2, `${dtype}: the change is ${along} x the updates`);
    }
  },
});

Deno.test("a stage that does not fit the machine is refused before loading, naming the fix", () => {
  const opt66b = parseOptConfig({
    vocab_size: 50272,
    hidden_size: 9216,
    num_hidden_layers: 64,
    ffn_dim: 36864,
    num_attention_heads: 72,
    max_position_embeddings: 2048,
  });
  const range = wholeModel(opt66b);
  const gib = 2 ** 30;
  assert.throws(
    () => ensureStageFits(opt66b, range, "float32", 24 * gib),
    /needs 2\d\d\.\d GiB with its float32 weights .* 24\.0 GiB available: .*--stages 1[0-9] or more.*--dtype bfloat16/,
  );
  assert.throws(
    () => ensureStageFits(opt66b, range, "bfloat16", 24 * gib),
    /bfloat16 weights .*--stages [5-9] or more \(dpzo plan/,
  );
  ensureStageFits(
    opt66b,
    { ...range, firstLayer: 0, endLayer: 4, head: false },
    "bfloat16",
    24 * gib,
  );
});
