// AssemblyScript source of the WebAssembly SIMD kernel for z(seed, name, index) (spec in
// ../z.ts). Build: `deno run -A src/rng/wasm/build.ts` (regenerates z_kernel_wasm.ts).
// @ts-nocheck: AssemblyScript, compiled by asc (v128, i32, f64x2, load... are asc builtins).
// No decorators (deno fmt would drop them): binaryen -O3 decides the inlining.
//
// Layout: Philox4x32-10 runs on four blocks at once (one block per i32x4 lane, the state words
// x0..x3 are four vectors); the Box-Muller transform runs in f64x2 (two pairs per op) on exactly
// the spec's binary64 operations (WebAssembly f64 arithmetic is IEEE correctly rounded and never
// contracted to FMA). Only the integer normalisation differs in form from the reference:
// clz32/shift is replaced by the exact double conversion of n = a | 1 whose exponent field is
// e = floor(log2 n) = 31 - clz32(n) and whose mantissa, as a number in [1, 2), is exactly
// nn * 2^-31; the sqrt2 threshold then compares mantissa fields (monotone), and the exact small
// integer e - 32 is built with the 2^52 magic-number trick. All selects are bit masks.
//
// Memory (fixed addresses, never grown, so JS views stay valid):
//   KEYS   20 x i32  round keys [k0_r, k1_r] written by JS, then `setKey(h0, h1)`
//   KEYV   22 x v128 splats of the round keys and of h0, h1
//   Z      CAP x f32 z output of `generate`
//   THETA  CAP x f32 parameters for the fused `perturbAdd` / `perturbDecay`

const KEYS: usize = 65536;
const KEYV: usize = 65536 + 1024;
const CAP: i32 = 65536; // floats per buffer (a multiple of 16)
const Z: usize = 131072;
const THETA: usize = Z + (<usize> CAP << 2);

const M0: i32 = 0xd2511f53;
const M1: i32 = 0xcd9e8d57;

const LN2: f64 = 0.6931471805599453;
const PI_2_32: f64 = 3.141592653589793 / 4294967296.0;
const L3: f64 = 1.0 / 3.0;
const L5: f64 = 1.0 / 5.0;
const L7: f64 = 1.0 / 7.0;
const L9: f64 = 1.0 / 9.0;
const L11: f64 = 1.0 / 11.0;
const L13: f64 = 1.0 / 13.0;
const S3: f64 = -(1.0 / 6.0);
const S5: f64 = 1.0 / 120.0;
const S7: f64 = -(1.0 / 5040.0);
const S9: f64 = 1.0 / 362880.0;
const S11: f64 = -(1.0 / 39916800.0);
const C2: f64 = -(1.0 / 2.0);
const C4: f64 = 1.0 / 24.0;
const C6: f64 = -(1.0 / 720.0);
const C8: f64 = 1.0 / 40320.0;
const C10: f64 = -(1.0 / 3628800.0);
const C12: f64 = 1.0 / 479001600.0;

// Mantissa field of the binary64 value 3037000500 * 2^-31 (the spec's sqrt2 threshold).
const TH_MANT: i64 = (<i64> 3037000500 - <i64> 2147483648) << 21;
const MANT_MASK: i64 = 0x000fffffffffffff;
const ONE_BITS: i64 = 0x3ff0000000000000;
const EXP_ONE: i64 = 0x0010000000000000;
const MAGIC_BITS: i64 = 0x4330000000000000; // 2^52
const MAGIC_EM32: f64 = 4503599627370496.0 + 1055.0; // 2^52 + 1023 + 32

export function keysPtr(): usize {
  return KEYS;
}
export function zPtr(): usize {
  return Z;
}
export function thetaPtr(): usize {
  return THETA;
}
export function capacity(): i32 {
  return CAP;
}

/** Splats the 20 round keys at KEYS and the name hash (h0, h1) for the following calls. */
export function setKey(h0: i32, h1: i32): void {
  for (let r: usize = 0; r < 20; r++) {
    v128.store(KEYV + (r << 4), i32x4.splat(load<i32>(KEYS + (r << 2))));
  }
  v128.store(KEYV + 320, i32x4.splat(h0));
  v128.store(KEYV + 336, i32x4.splat(h1));
}

// Box-Muller for the pairs (a, c) in lanes 0 and 1 of `a4`, `c4` (lanes 2, 3 ignored). Returns
// f32x4 [cos(pair 0), sin(pair 0), cos(pair 1), sin(pair 1)], each float32(r * trig).
function boxMuller2(a4: v128, c4: v128): v128 {
  // Radius.
  const nd = f64x2.convert_low_i32x4_u(v128.or(a4, i32x4.splat(1)));
  const mant = v128.and(nd, i64x2.splat(MANT_MASK));
  const big = i64x2.ge_s(mant, i64x2.splat(TH_MANT)); // all ones where nn >= threshold
  const m = i64x2.sub(v128.or(mant, i64x2.splat(ONE_BITS)), v128.and(big, i64x2.splat(EXP_ONE)));
  const ebits = i64x2.sub(i64x2.shr_u(nd, 52), big); // e + 1023
  const em32 = f64x2.sub(
    v128.or(ebits, i64x2.splat(MAGIC_BITS)),
    f64x2.splat(MAGIC_EM32),
  );
  const one = f64x2.splat(1.0);
  const s = f64x2.div(f64x2.sub(m, one), f64x2.add(m, one));
  const s2 = f64x2.mul(s, s);
  let p = f64x2.mul(s2, f64x2.splat(L13));
  p = f64x2.mul(s2, f64x2.add(f64x2.splat(L11), p));
  p = f64x2.mul(s2, f64x2.add(f64x2.splat(L9), p));
  p = f64x2.mul(s2, f64x2.add(f64x2.splat(L7), p));
  p = f64x2.mul(s2, f64x2.add(f64x2.splat(L5), p));
  p = f64x2.mul(s2, f64x2.add(f64x2.splat(L3), p));
  p = f64x2.add(one, p);
  const l = f64x2.add(
    f64x2.mul(f64x2.add(s, s), p),
    f64x2.mul(em32, f64x2.splat(LN2)),
  );
  const r = f64x2.sqrt(f64x2.mul(f64x2.splat(-2.0), l));

  // Angle: octant o = c >>> 29; odd octants reflect f and negate S.
  const oddm = i32x4.shr_s(i32x4.shl(c4, 2), 31); // -1 where o is odd
  const g = v128.xor(
    v128.and(c4, i32x4.splat(0x1fffffff)),
    v128.and(oddm, i32x4.splat(0x1fffffff)),
  );
  const g21 = v128.or(i32x4.shl(g, 1), i32x4.splat(1)); // 2g + 1 < 2^30
  const w = f64x2.mul(f64x2.convert_low_i32x4_s(g21), f64x2.splat(PI_2_32));
  const w2 = f64x2.mul(w, w);
  let ps = f64x2.mul(w2, f64x2.splat(S11));
  ps = f64x2.mul(w2, f64x2.add(f64x2.splat(S9), ps));
  ps = f64x2.mul(w2, f64x2.add(f64x2.splat(S7), ps));
  ps = f64x2.mul(w2, f64x2.add(f64x2.splat(S5), ps));
  ps = f64x2.mul(w2, f64x2.add(f64x2.splat(S3), ps));
  const sn = f64x2.mul(w, f64x2.add(one, ps));
  let pc = f64x2.mul(w2, f64x2.splat(C12));
  pc = f64x2.mul(w2, f64x2.add(f64x2.splat(C10), pc));
  pc = f64x2.mul(w2, f64x2.add(f64x2.splat(C8), pc));
  pc = f64x2.mul(w2, f64x2.add(f64x2.splat(C6), pc));
  pc = f64x2.mul(w2, f64x2.add(f64x2.splat(C4), pc));
  pc = f64x2.mul(w2, f64x2.add(f64x2.splat(C2), pc));
  const cs = f64x2.add(one, pc);

  // k = ((o + odd) >>> 1) & 3; sign bits in bit 31 of i32 lanes, moved to bit 63 of i64 lanes.
  const k = v128.and(
    i32x4.shr_u(i32x4.sub(i32x4.shr_u(c4, 29), oddm), 1),
    i32x4.splat(3),
  );
  const swap32 = i32x4.shr_s(i32x4.shl(k, 31), 31); // -1 where k is odd
  const sgnT32 = i32x4.shl(oddm, 31);
  const signBit = i32x4.splat(0x80000000);
  const sgn0_32 = v128.and(i32x4.shl(i32x4.add(k, i32x4.splat(1)), 30), signBit); // bit 31 = ((k + 1) & 2) != 0
  const sgn1_32 = v128.and(i32x4.shl(k, 30), signBit); // bit 31 = (k & 2) != 0
  const zero = i32x4.splat(0);
  const swap = i32x4.shuffle(swap32, swap32, 0, 0, 1, 1);
  const t = v128.xor(sn, i32x4.shuffle(zero, sgnT32, 0, 4, 0, 5));
  const a0 = v128.bitselect(t, cs, swap);
  const a1 = v128.bitselect(cs, t, swap);
  const cosv = v128.xor(a0, i32x4.shuffle(zero, sgn0_32, 0, 4, 0, 5));
  const sinv = v128.xor(a1, i32x4.shuffle(zero, sgn1_32, 0, 4, 0, 5));
  const zc = f32x4.demote_f64x2_zero(f64x2.mul(r, cosv));
  const zs = f32x4.demote_f64x2_zero(f64x2.mul(r, sinv));
  return i32x4.shuffle(zc, zs, 0, 4, 1, 5);
}

// z for the 16 elements of blocks b..b+3 (b = blo + 2^32 bhi) into four f32x4 at `dst`.
function group(blo: i32, bhi: i32, dst: usize): void {
  const base = i32x4.splat(blo);
  let x0 = i32x4.add(base, v128(0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0));
  // Carry into the high word where the low word wrapped (x0 < base unsigned).
  let x1 = i32x4.sub(i32x4.splat(bhi), i32x4.lt_u(x0, base));
  let x2 = v128.load(KEYV + 320);
  let x3 = v128.load(KEYV + 336);
  const m0 = i32x4.splat(M0);
  const m1 = i32x4.splat(M1);
  for (let r: usize = 0; r < 20; r += 2) {
    const p0l = i64x2.extmul_low_i32x4_u(x0, m0);
    const p0h = i64x2.extmul_high_i32x4_u(x0, m0);
    const p1l = i64x2.extmul_low_i32x4_u(x2, m1);
    const p1h = i64x2.extmul_high_i32x4_u(x2, m1);
    const hi0 = i32x4.shuffle(p0l, p0h, 1, 3, 5, 7);
    const lo0 = i32x4.shuffle(p0l, p0h, 0, 2, 4, 6);
    const hi1 = i32x4.shuffle(p1l, p1h, 1, 3, 5, 7);
    const lo1 = i32x4.shuffle(p1l, p1h, 0, 2, 4, 6);
    x0 = v128.xor(v128.xor(hi1, x1), v128.load(KEYV + (r << 4)));
    x1 = lo1;
    x2 = v128.xor(v128.xor(hi0, x3), v128.load(KEYV + ((r + 1) << 4)));
    x3 = lo0;
  }
  // Pairs (x0, x1) -> lanes 0, 1 and (x2, x3) -> lanes 2, 3 of each block.
  const p01 = boxMuller2(x0, x1); // blocks 0, 1: [z0 b0, z1 b0, z0 b1, z1 b1]
  const p23 = boxMuller2(x2, x3); // [z2 b0, z3 b0, z2 b1, z3 b1]
  v128.store(dst, i32x4.shuffle(p01, p23, 0, 1, 4, 5));
  v128.store(dst, i32x4.shuffle(p01, p23, 2, 3, 6, 7), 16);
  const q01 = boxMuller2(i32x4.shuffle(x0, x0, 2, 3, 2, 3), i32x4.shuffle(x1, x1, 2, 3, 2, 3));
  const q23 = boxMuller2(i32x4.shuffle(x2, x2, 2, 3, 2, 3), i32x4.shuffle(x3, x3, 2, 3, 2, 3));
  v128.store(dst, i32x4.shuffle(q01, q23, 0, 1, 4, 5), 32);
  v128.store(dst, i32x4.shuffle(q01, q23, 2, 3, 6, 7), 48);
}

/**
 * Writes z of blocks b0 .. b0 + nBlocks - 1 (b0 = blo + 2^32 bhi, as uint32 words) to Z:
 * element 4 (b - b0) + lane. Computes whole groups of 4 blocks (up to 12 floats past the end).
 */
export function generate(blo: i32, bhi: i32, nBlocks: i32): void {
  let b: u64 = (<u64> (<u32> bhi) << 32) | <u64> (<u32> blo);
  const end: usize = Z + (<usize> nBlocks << 4);
  for (let dst: usize = Z; dst < end; dst += 64) {
    group(<i32> b, <i32> (b >> 32), dst);
    b += 4;
  }
}

/**
 * Fused pass on THETA[0 .. n): theta_i = float32(theta_i + float32(c * z_i)) with z_i the
 * element i of the stream starting at block b0 (so THETA[0] is element 4 b0). Whole vectors are
 * processed (up to 15 floats past n, never read back by the caller).
 */
export function perturbAdd(blo: i32, bhi: i32, n: i32, c: f32): void {
  let b: u64 = (<u64> (<u32> bhi) << 32) | <u64> (<u32> blo);
  const cv = f32x4.splat(c);
  const end: usize = THETA + (<usize> n << 2);
  for (let p: usize = THETA; p < end; p += 64) {
    group(<i32> b, <i32> (b >> 32), Z);
    v128.store(p, f32x4.add(v128.load(p), f32x4.mul(cv, v128.load(Z))));
    v128.store(p, f32x4.add(v128.load(p, 16), f32x4.mul(cv, v128.load(Z, 16))), 16);
    v128.store(p, f32x4.add(v128.load(p, 32), f32x4.mul(cv, v128.load(Z, 32))), 32);
    v128.store(p, f32x4.add(v128.load(p, 48), f32x4.mul(cv, v128.load(Z, 48))), 48);
    b += 4;
  }
}

/** As perturbAdd with decay: theta_i = float32(float32(keep * theta_i) + float32(c * z_i)). */
export function perturbDecay(blo: i32, bhi: i32, n: i32, c: f32, keep: f32): void {
  let b: u64 = (<u64> (<u32> bhi) << 32) | <u64> (<u32> blo);
  const cv = f32x4.splat(c);
  const kv = f32x4.splat(keep);
  const end: usize = THETA + (<usize> n << 2);
  for (let p: usize = THETA; p < end; p += 64) {
    group(<i32> b, <i32> (b >> 32), Z);
    for (let o: usize = 0; o < 64; o += 16) {
      v128.store(
        p + o,
        f32x4.add(f32x4.mul(kv, v128.load(p + o)), f32x4.mul(cv, v128.load(Z + o))),
      );
    }
    b += 4;
  }
}
