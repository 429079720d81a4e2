/**
 * Tests of the WebAssembly SIMD z kernel: bit-identical to the JS reference (`fillZKeyed`,
 * `boxMullerPair`) and to the committed vectors, on random (seed, name, start, length) with
 * unaligned starts and lengths, block-counter carries, the spec's Box-Muller edge cases
 * (threshold, exponents, octant boundaries), and `perturb` via WASM equal to `perturb` via JS.
 */
import { strict as assert } from "node:assert";
import {
  boxMullerPair,
  createZKernel,
  fillZKeyed,
  nameHash,
  philoxRoundKeys,
  seedKey,
} from "../src/rng/mod.ts";
import { CHUNK, mezoDecayApplies, perturb, WASM_CHUNK } from "../src/dpzo/perturbation.ts";

interface Vectors {
  vectors: { seed: string; name: string; indices: number[]; bits: string[] }[];
  box_muller_pairs: { a: string; c: string; values: number[] }[];
}
const V: Vectors = JSON.parse(
  Deno.readTextFileSync(new URL("./vectors/z_vectors.json", import.meta.url)),
);

const kernel = createZKernel();
if (kernel === null) throw new Error("WebAssembly SIMD unavailable: the z kernel cannot load");
const K = kernel;

const hex = (x: number) => (x >>> 0).toString(16).padStart(8, "0");
const bitsOf = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);

/** A small deterministic generator for test cases (xorshift32). */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
}

function assertSameBits(got: Float32Array, want: Float32Array, what: string): void {
  assert.equal(got.length, want.length, what);
  const g = bitsOf(got), w = bitsOf(want);
  for (let i = 0; i < g.length; i++) {
    if (g[i] !== w[i]) {
      assert.fail(`${what}: element ${i}: wasm ${hex(g[i])} (${got[i]}), js ${hex(w[i])}`);
    }
  }
}

function compare(seed: bigint, name: string, start: number, n: number): void {
  const keys = philoxRoundKeys(...seedKey(seed));
  const [h0, h1] = nameHash(name);
  const want = new Float32Array(n);
  fillZKeyed(want, keys, h0, h1, start);
  const got = new Float32Array(n);
  K.fill(got, keys, h0, h1, start);
  assertSameBits(got, want, `z(${seed}, ${name}, ${start}..+${n})`);
}

Deno.test("wasm z reproduces the committed test vectors bit for bit", () => {
  let count = 0;
  for (const v of V.vectors) {
    const keys = philoxRoundKeys(...seedKey(BigInt(v.seed)));
    const [h0, h1] = nameHash(v.name);
    v.indices.forEach((index, j) => {
      // Alone, and inside ranges starting at every offset before it.
      for (let back = 0; back <= Math.min(index, 5); back++) {
        const buf = new Float32Array(back + 1 + (index % 3));
        K.fill(buf, keys, h0, h1, index - back);
        assert.equal(hex(bitsOf(buf)[back]), v.bits[j], `z(${v.seed}, ${v.name}, ${index})`);
      }
      count++;
    });
  }
  assert.equal(count, 96);
});

Deno.test("wasm z equals the JS reference on random seeds, names, starts and lengths", () => {
  const next = rng(12345);
  const names = ["x", "", "model.decoder.embed_tokens.weight", "model.decoder.layers.7.fc2.bias"];
  let elements = 0;
  for (let t = 0; t < 300; t++) {
    const seed = (BigInt(next()) << 32n) | BigInt(next());
    const name = t < names.length ? names[t] : `p.${next() % 1000}.w`;
    const n = t % 10 === 0 ? next() % 4 : next() % (t % 7 === 0 ? 5000 : 300);
    // Starts: small, near 2^32 (block index carries into the high counter word at 4 * 2^32),
    // and up to 2^53 - n.
    const kind = t % 4;
    const start = kind === 0
      ? next() % 100000
      : kind === 1
      ? 4 * 2 ** 32 - 64 + (next() % 128)
      : kind === 2
      ? (next() % 2 ** 21) * 2 ** 32 + next()
      : 2 ** 53 - n - (next() % 1000);
    compare(seed, name, start, n);
    elements += n;
  }
  assert.ok(elements > 100000);
});

Deno.test("wasm z over ranges longer than the kernel buffer and around seed extremes", () => {
  compare(0n, "model.decoder.embed_tokens.weight", 3, K.capacity + 1001);
  compare(2n ** 64n - 1n, "x", 4 * 2 ** 32 - 10001, 20002);
  compare(0x0123456789abcdefn, "y", 0, 4096);
});

Deno.test("wasm Box-Muller equals the reference on the spec's edge cases", () => {
  const as: number[] = [], cs: number[] = [];
  const want: number[] = [];
  for (const { a, c, values } of V.box_muller_pairs) {
    as.push(parseInt(a, 16));
    cs.push(parseInt(c, 16));
    want.push(...values);
  }
  // Radius: every exponent, the sqrt2 threshold (nn = 3037000500) and its neighbours at every
  // exponent, and the extremes; angle: every octant boundary and its neighbours.
  const radiusCases = [0, 1, 2, 3, 0xffffffff, 0xfffffffe, 0x80000000, 0x7fffffff];
  for (let e = 0; e < 32; e++) {
    radiusCases.push(2 ** e, 2 ** e - 1, 2 ** e + 1);
    for (let d = -2; d <= 2; d++) {
      radiusCases.push(Math.floor((3037000500 + d) / 2 ** (31 - e)));
    }
  }
  const angleCases: number[] = [0, 1, 0xffffffff, 0x1fffffff];
  for (let o = 0; o < 8; o++) {
    for (let d = -2; d <= 2; d++) angleCases.push((o * 2 ** 29 + d) >>> 0);
  }
  for (const a of radiusCases) {
    for (const c of angleCases) {
      as.push(a >>> 0);
      cs.push(c >>> 0);
    }
  }
  const next = rng(777);
  for (let i = 0; i < 200000; i++) {
    as.push(next());
    cs.push(next());
  }
  const a = Uint32Array.from(as), c = Uint32Array.from(cs);
  const got = new Float32Array(2 * a.length);
  K.boxMuller(a, c, got);
  const ref = new Float32Array(2 * a.length);
  for (let j = 0; j < a.length; j++) boxMullerPair(a[j], c[j], ref, 2 * j);
  assertSameBits(got, ref, "boxMuller");
  for (let j = 0; j < want.length; j++) assert.ok(Object.is(got[j], want[j]), `vector pair ${j}`);
});

function model() {
  const sizes: [string, number][] = [
    ["model.decoder.embed_tokens.weight", 2 * WASM_CHUNK + 4 * CHUNK + 13],
    ["model.decoder.layers.0.self_attn.q_proj.weight", WASM_CHUNK],
    ["model.decoder.layers.0.self_attn.q_proj.bias", 7],
    ["model.decoder.layers.0.self_attn_layer_norm.weight", 64],
    ["model.decoder.layers.0.fc1.weight", 4097],
    ["model.decoder.final_layer_norm.bias", 3],
    ["x", 1],
    ["empty", 0],
  ];
  return sizes.map(([name, n], k) => {
    const data = new Float32Array(n);
    for (let i = 0; i < n; i++) data[i] = Math.sin(i * 0.37 + k) * 0.05;
    return { name, data };
  });
}

Deno.test("perturb via WASM equals perturb via JS bit for bit (plain and decayed passes)", () => {
  const seed = 0xfedcba9876543210n;
  const phi = 1e-3, lr = 1e-4, ghat = 0.37;
  const wd = { lr: 0.01, decay: 0.5, appliesTo: mezoDecayApplies };
  const passes: [number, boolean][] = [
    [phi, false],
    [-2 * phi, false],
    [phi - lr * ghat, true],
    [1e-3 / 3, false],
  ];
  const a = model(), b = model();
  for (const [coeff, decay] of passes) {
    const opts = decay ? { weightDecay: wd } : {};
    perturb(a, seed, coeff, { ...opts, impl: "wasm" });
    perturb(b, seed, coeff, { ...opts, impl: "js" });
    a.forEach((t, k) => assertSameBits(t.data, b[k].data, `${t.name} after coeff ${coeff}`));
  }
});

Deno.test("kernel perturb rejects unaligned or oversized chunks", () => {
  K.setKey(philoxRoundKeys(1, 2), 3, 4);
  assert.throws(() => K.perturb(new Float32Array(8), 2, 1), RangeError);
  assert.throws(() => K.perturb(new Float32Array(K.capacity + 4), 0, 1), RangeError);
  assert.throws(() => K.generate(0, K.capacity), RangeError);
  assert.throws(() => K.generate(-1, 4), RangeError);
});
