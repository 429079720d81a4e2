/**
 * The perturbation direction `z(seed, name, index)`: standard normal float32 values that are a
 * pure function of a 64-bit step seed, a Hugging Face parameter name and an element index.
 * Any slice of any tensor can be regenerated alone, in any process, on any backend.
 *
 * ## Specification (version 1) — every backend must reproduce these bits
 *
 * Inputs: `seed` an integer in [0, 2^64); `name` a string (the canonical parameter name: a tied
 * weight uses the name of the tensor it is tied to, so OPT's `lm_head.weight` uses
 * `model.decoder.embed_tokens.weight`); `index` an integer in [0, 2^53), the element's position in
 * the tensor's row-major flattened layout.
 *
 * 1. Name hash: `h = FNV-1a-64(UTF-8 bytes of name)` (offset basis 0xcbf29ce484222325, prime
 *    0x100000001b3, for each byte: `h ^= byte; h *= prime mod 2^64`).
 * 2. Block: element `i` belongs to block `b = floor(i / 4)`, lane `i mod 4`.
 * 3. Bits: `(x0, x1, x2, x3) = Philox4x32-10(counter, key)` (Random123 definition) with
 *    `counter = (b mod 2^32, floor(b / 2^32), h mod 2^32, floor(h / 2^32))` and
 *    `key = (seed mod 2^32, floor(seed / 2^32))`. (The seed is the key; the name hash and the
 *    block index share the 128-bit counter, so every (seed, name, block) triple is a distinct
 *    input to the PRF. Names collide only if their 64-bit FNV hashes do.)
 * 4. Lanes 0,1 come from the pair (a, c) = (x0, x1); lanes 2,3 from (a, c) = (x2, x3), by the
 *    Box-Muller transform `r = sqrt(-2 ln u)`, `lane_even = r cos(theta)`, `lane_odd = r sin(theta)`
 *    with `u = (a | 1) / 2^32` in (0, 1) and `theta = 2 pi (c + 1/2) / 2^32` in (0, 2 pi) (cell
 *    midpoints, so neither r nor cos nor sin is ever 0 and no signed-zero case exists).
 *    ln, cos and sin are NOT the platform's (JS Math.log/cos/sin are not correctly rounded and
 *    differ across engines and GPUs). They are defined by the following IEEE-754 binary64
 *    operations (+, -, *, /, sqrt, each correctly rounded to nearest-even, evaluated exactly as
 *    parenthesised, left to right, with NO fused multiply-add contraction) and 32-bit unsigned
 *    integer operations, so the result is bit-exact on every conforming backend:
 *
 *    Radius, from uint32 `a`:
 *      `n = a | 1` (in [1, 2^32 - 1]); `s0 = clz32(n)`; `nn = (n << s0) mod 2^32` (in
 *      [2^31, 2^32)); `e = 31 - s0`; if `nn >= 3037000500` (the mantissa exceeds sqrt 2):
 *      `m = nn * 2^-32`, `e = e + 1`, else `m = nn * 2^-31`. Now `n = m * 2^e` exactly, m in
 *      [0.7071, 1.4143).
 *      `s = (m - 1) / (m + 1)`; `s2 = s * s`;
 *      `P = 1 + s2*(1/3 + s2*(1/5 + s2*(1/7 + s2*(1/9 + s2*(1/11 + s2*(1/13))))))`;
 *      `L = (2 * s) * P + (e - 32) * LN2` (L ~ ln u < 0); `r = sqrt(-2 * L)`.
 *      Here `1/k` is the binary64 quotient of 1 by k, `(e - 32)` an exact small integer and LN2
 *      the binary64 value nearest ln 2 (0x3FE62E42FEFA39EF).
 *    Angle, from uint32 `c`: octant `o = c >>> 29`, `f = c & 0x1fffffff`;
 *      o even: `k = o >>> 1`, `g = f`, `sigma = +1`;
 *      o odd:  `k = ((o + 1) >>> 1) & 3`, `g = f ^ 0x1fffffff`, `sigma = -1`;
 *      `w = (2 * g + 1) * PI_2_32`, with `2g+1` an exact integer and PI_2_32 = (binary64 pi) *
 *      2^-32 (so w in (0, pi/4) and theta = k pi/2 + sigma w); `w2 = w * w`;
 *        `S = w * (1 + w2*(-1/6 + w2*(1/120 + w2*(-1/5040 + w2*(1/362880 + w2*(-1/39916800))))))`
 *        `C = 1 + w2*(-1/2 + w2*(1/24 + w2*(-1/720 + w2*(1/40320 + w2*(-1/3628800
 *             + w2*(1/479001600))))))`
 *      (`-1/k` is the negated binary64 quotient); `T = sigma * S` (exact). Then
 *      `(cos, sin) = (C, T), (-T, C), (-C, -T), (T, -C)` for `k = 0, 1, 2, 3`.
 *    Output: `lane_even = float32(r * cos)`, `lane_odd = float32(r * sin)` (round to nearest
 *    even).
 *
 * The approximations are accurate to about 1e-11 (far below float32 resolution), 2.1e-5 <= |z|
 * <= 6.67, and the recipe is table-free and branch-free up to selects, so it vectorises in WASM
 * SIMD or a GPU kernel (use non-fused round-to-nearest ops there: `-ffp-contract=off`,
 * `__dmul_rn`/`__dadd_rn`). The committed vectors in `test/vectors/z_vectors.json` pin it.
 */

import { mulhiM0, mulhiM1, PHILOX_M0, PHILOX_M1, philoxRoundKeys } from "./philox.ts";

const TWO32 = 4294967296;
const TWO64 = 1n << 64n;
const FNV_OFFSET = 0xcbf29ce484222325n;
const FNV_PRIME = 0x100000001b3n;
const MASK64 = TWO64 - 1n;

const LN2 = 0.6931471805599453; // binary64 0x3FE62E42FEFA39EF
const TWO_M31 = 1 / 2147483648;
const TWO_M32 = 1 / 4294967296;
const PI_2_32 = Math.PI * TWO_M32;
const SQRT2_THRESHOLD = 3037000500; // smallest nn with nn * 2^-31 > sqrt(2)

const L3 = 1 / 3, L5 = 1 / 5, L7 = 1 / 7, L9 = 1 / 9, L11 = 1 / 11, L13 = 1 / 13;
const S3 = -(1 / 6), S5 = 1 / 120, S7 = -(1 / 5040), S9 = 1 / 362880, S11 = -(1 / 39916800);
const C2 = -(1 / 2), C4 = 1 / 24, C6 = -(1 / 720), C8 = 1 / 40320, C10 = -(1 / 3628800);
const C12 = 1 / 479001600;

const encoder = new TextEncoder();

/** FNV-1a 64 of the UTF-8 bytes of `name`, as [low 32 bits, high 32 bits] (uint32). */
export function nameHash(name: string): [number, number] {
  let h = FNV_OFFSET;
  for (const byte of encoder.encode(name)) {
    h = ((h ^ BigInt(byte)) * FNV_PRIME) & MASK64;
  }
  return [Number(h & 0xffffffffn), Number(h >> 32n)];
}

/** Splits a seed in [0, 2^64) into Philox key words [low, high] (uint32); throws otherwise. */
export function seedKey(seed: bigint): [number, number] {
  if (typeof seed !== "bigint" || seed < 0n || seed >= TWO64) {
    throw new RangeError(`z: seed must be a bigint in [0, 2^64), got ${String(seed)}`);
  }
  return [Number(seed & 0xffffffffn), Number(seed >> 32n)];
}

/** Box-Muller radius sqrt(-2 ln u), u = (a | 1) / 2^32, by the spec's binary64 recipe. */
export function radius(a: number): number {
  const n = (a | 1) >>> 0;
  const s0 = Math.clz32(n);
  const nn = (n << s0) >>> 0;
  let e = 31 - s0;
  let m = nn * TWO_M31;
  if (nn >= SQRT2_THRESHOLD) {
    m = nn * TWO_M32;
    e = e + 1;
  }
  const s = (m - 1) / (m + 1);
  const s2 = s * s;
  const p = 1 + s2 * (L3 + s2 * (L5 + s2 * (L7 + s2 * (L9 + s2 * (L11 + s2 * L13)))));
  return Math.sqrt(-2 * ((2 * s) * p + (e - 32) * LN2));
}

/**
 * Writes float32(r cos theta), float32(r sin theta) for the pair (a, c) to dst[off], dst[off+1]
 * (the spec's step 4). The quadrant selection is branch-free: with t in {0, 1} and T, C != 0,
 * `t * T + (1 - t) * C` is exactly the selected value.
 */
export function boxMullerPair(a: number, c: number, dst: Float32Array, off: number): void {
  const r = radius(a);
  const x = c >>> 0;
  const o = x >>> 29;
  const odd = o & 1;
  const k = ((o + odd) >>> 1) & 3;
  const g = (x & 0x1fffffff) ^ (0x1fffffff & -odd);
  const w = (2 * g + 1) * PI_2_32;
  const w2 = w * w;
  const sn = w * (1 + w2 * (S3 + w2 * (S5 + w2 * (S7 + w2 * (S9 + w2 * S11)))));
  const cs = 1 + w2 * (C2 + w2 * (C4 + w2 * (C6 + w2 * (C8 + w2 * (C10 + w2 * C12)))));
  const t = (1 - 2 * odd) * sn;
  const swap = k & 1;
  const a0 = swap * t + (1 - swap) * cs; // |cos| source: C for k even, T for k odd
  const a1 = swap * cs + (1 - swap) * t; // |sin| source: T for k even, C for k odd
  dst[off] = r * ((1 - ((k + 1) & 2)) * a0);
  dst[off + 1] = r * ((1 - (k & 2)) * a1);
}

/**
 * Writes z(seed, name, start + j) to `out[j]` for j in [0, out.length). The result does not
 * depend on how a range is split into calls.
 */
export function fillZ(out: Float32Array, seed: bigint, name: string, start: number): void {
  if (!Number.isSafeInteger(start) || start < 0 || !Number.isSafeInteger(start + out.length)) {
    throw new RangeError(`z: start must be an integer in [0, 2^53 - length), got ${start}`);
  }
  const [k0, k1] = seedKey(seed);
  const [h0, h1] = nameHash(name);
  fillZKeyed(out, philoxRoundKeys(k0, k1), h0, h1, start);
}

const edge = new Float32Array(4);

/** Computes block `b` (c0 = low word, c1 = high word) of the stream into dst[off..off+3]. */
function zBlock(
  keys: Int32Array,
  c0: number,
  c1: number,
  h0: number,
  h1: number,
  dst: Float32Array,
  off: number,
): void {
  let x0 = c0 | 0, x1 = c1 | 0, x2 = h0 | 0, x3 = h1 | 0;
  for (let r = 0; r < 20; r += 2) {
    const hi0 = mulhiM0(x0);
    const lo0 = Math.imul(PHILOX_M0, x0);
    const hi1 = mulhiM1(x2);
    const lo1 = Math.imul(PHILOX_M1, x2);
    x0 = hi1 ^ x1 ^ keys[r];
    x1 = lo1;
    x2 = hi0 ^ x3 ^ keys[r + 1];
    x3 = lo0;
  }
  boxMullerPair(x0, x1, dst, off);
  boxMullerPair(x2, x3, dst, off + 2);
}

/**
 * fillZ with the round keys (philoxRoundKeys of seedKey) and the name hash already computed,
 * for callers that fill many chunks of one tensor.
 */
export function fillZKeyed(
  out: Float32Array,
  keys: Int32Array,
  h0: number,
  h1: number,
  start: number,
): void {
  const end = start + out.length;
  if (end <= start) return;
  let block = Math.floor(start / 4);
  const lastBlock = Math.floor((end - 1) / 4);
  let c0 = block % TWO32;
  let c1 = Math.floor(block / TWO32);
  // Partial blocks (at most one at each end) go through a scratch block.
  const firstFull = Math.ceil(start / 4);
  const endFull = Math.floor(end / 4); // exclusive
  for (; block <= lastBlock; block++) {
    const base = block * 4;
    if (block >= firstFull && block < endFull) {
      zBlock(keys, c0, c1, h0, h1, out, base - start);
    } else {
      zBlock(keys, c0, c1, h0, h1, edge, 0);
      for (let l = 0; l < 4; l++) {
        const i = base + l;
        if (i >= start && i < end) out[i - start] = edge[l];
      }
    }
    c0++;
    if (c0 === TWO32) {
      c0 = 0;
      c1++;
    }
  }
}

/** z(seed, name, index) for a single element (slow path; use fillZ for ranges). */
export function zAt(seed: bigint, name: string, index: number): number {
  const one = new Float32Array(1);
  fillZ(one, seed, name, index);
  return one[0];
}
