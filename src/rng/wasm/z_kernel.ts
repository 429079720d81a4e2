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
const CAP: i32 = 65536; // floats per buffer (a multiple of 32: whole 8-block groups)
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

// Constants as splatted vectors in memory (initialised below by the start function). They are
// loaded, not written as v128.const: V8 rematerialises each v128.const inside the loop with
// several instructions, while a load is one.
const CONSTS: usize = 65536 + 2048;
const K_ONE_I: usize = CONSTS;
const K_MANT: usize = CONSTS + 16;
const K_TH: usize = CONSTS + 32;
const K_ONE_BITS: usize = CONSTS + 48;
const K_EXP_ONE: usize = CONSTS + 64;
const K_MAGIC: usize = CONSTS + 80;
const K_MAGIC_EM32: usize = CONSTS + 96;
const K_ONE: usize = CONSTS + 112;
const K_LN2: usize = CONSTS + 128;
const K_M2: usize = CONSTS + 144;
const K_F29: usize = CONSTS + 160;
const K_PI: usize = CONSTS + 176;
const K_THREE: usize = CONSTS + 192;
const K_SIGN: usize = CONSTS + 208;
const K_M0: usize = CONSTS + 224;
const K_M1: usize = CONSTS + 240;
const K_IOTA: usize = CONSTS + 256;
const K_POLY: usize = CONSTS + 272; // L3..L13, S3..S11, C2..C12 (17 vectors)

function initConsts(): void {
  v128.store(K_ONE_I, i32x4.splat(1));
  v128.store(K_MANT, i64x2.splat(MANT_MASK));
  v128.store(K_TH, i64x2.splat(TH_MANT));
  v128.store(K_ONE_BITS, i64x2.splat(ONE_BITS));
  v128.store(K_EXP_ONE, i64x2.splat(EXP_ONE));
  v128.store(K_MAGIC, i64x2.splat(MAGIC_BITS));
  v128.store(K_MAGIC_EM32, f64x2.splat(MAGIC_EM32));
  v128.store(K_ONE, f64x2.splat(1.0));
  v128.store(K_LN2, f64x2.splat(LN2));
  v128.store(K_M2, f64x2.splat(-2.0));
  v128.store(K_F29, i32x4.splat(0x1fffffff));
  v128.store(K_PI, f64x2.splat(PI_2_32));
  v128.store(K_THREE, i32x4.splat(3));
  v128.store(K_SIGN, i32x4.splat(0x80000000));
  v128.store(K_M0, i32x4.splat(M0));
  v128.store(K_M1, i32x4.splat(M1));
  v128.store(K_IOTA, v128(0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0));
  const poly: f64[] = [L3, L5, L7, L9, L11, L13, S3, S5, S7, S9, S11, C2, C4, C6, C8, C10, C12];
  for (let i = 0; i < poly.length; i++) {
    v128.store(K_POLY + (<usize> i << 4), f64x2.splat(unchecked(poly[i])));
  }
}
initConsts();

const K_L3 = K_POLY;
const K_L5 = K_POLY + 16;
const K_L7 = K_POLY + 32;
const K_L9 = K_POLY + 48;
const K_L11 = K_POLY + 64;
const K_L13 = K_POLY + 80;
const K_S3 = K_POLY + 96;
const K_S5 = K_POLY + 112;
const K_S7 = K_POLY + 128;
const K_S9 = K_POLY + 144;
const K_S11 = K_POLY + 160;
const K_C2 = K_POLY + 176;
const K_C4 = K_POLY + 192;
const K_C6 = K_POLY + 208;
const K_C8 = K_POLY + 224;
const K_C10 = K_POLY + 240;
const K_C12 = K_POLY + 256;

// float32(r * C) and float32(r * S) (C, S > 0 on the reduced angle w) for four sets of four
// pairs: n = a | 1 and 2g + 1 in lanes 0..3 of (n4, g4), (n4b, g4b), (n4c, g4c), (n4d, g4d),
// stored as f32x4 rC at `dst` and rS at `dst + 16` (dstB, dstC, dstD for the other sets).
// Each set has two f64x2 halves (lanes 0, 1: suffix L; lanes 2, 3: suffix H; the other sets
// add b, c, d), and all eight are computed in lockstep, each line next to its seven siblings:
// one half is a chain of about 90 cycles of latency (div, Horner, sqrt), and eight independent
// chains keep the core busy where two left it waiting (Box-Muller is ~85% of a pass; this made
// z 1.2x faster, with the same operations on every value, so the same bits).
function radiusTrig16(
  n4: v128,
  g4: v128,
  n4b: v128,
  g4b: v128,
  n4c: v128,
  g4c: v128,
  n4d: v128,
  g4d: v128,
  dst: usize,
  dstB: usize,
  dstC: usize,
  dstD: usize,
): void {
  // Radius: the double nd = n is exact; its exponent is e and its mantissa nn * 2^-31.
  const ndL = f64x2.convert_low_i32x4_u(n4);
  const ndLb = f64x2.convert_low_i32x4_u(n4b);
  const ndLc = f64x2.convert_low_i32x4_u(n4c);
  const ndLd = f64x2.convert_low_i32x4_u(n4d);
  const ndH = f64x2.convert_low_i32x4_u(i32x4.shuffle(n4, n4, 2, 3, 2, 3));
  const ndHb = f64x2.convert_low_i32x4_u(i32x4.shuffle(n4b, n4b, 2, 3, 2, 3));
  const ndHc = f64x2.convert_low_i32x4_u(i32x4.shuffle(n4c, n4c, 2, 3, 2, 3));
  const ndHd = f64x2.convert_low_i32x4_u(i32x4.shuffle(n4d, n4d, 2, 3, 2, 3));
  const mantMask = v128.load(K_MANT);
  const mantL = v128.and(ndL, mantMask);
  const mantLb = v128.and(ndLb, mantMask);
  const mantLc = v128.and(ndLc, mantMask);
  const mantLd = v128.and(ndLd, mantMask);
  const mantH = v128.and(ndH, mantMask);
  const mantHb = v128.and(ndHb, mantMask);
  const mantHc = v128.and(ndHc, mantMask);
  const mantHd = v128.and(ndHd, mantMask);
  const th = v128.load(K_TH);
  const bigL = i64x2.ge_s(mantL, th); // all ones where nn >= threshold
  const bigLb = i64x2.ge_s(mantLb, th);
  const bigLc = i64x2.ge_s(mantLc, th);
  const bigLd = i64x2.ge_s(mantLd, th);
  const bigH = i64x2.ge_s(mantH, th);
  const bigHb = i64x2.ge_s(mantHb, th);
  const bigHc = i64x2.ge_s(mantHc, th);
  const bigHd = i64x2.ge_s(mantHd, th);
  const oneBits = v128.load(K_ONE_BITS);
  const expOne = v128.load(K_EXP_ONE);
  const mL = i64x2.sub(v128.or(mantL, oneBits), v128.and(bigL, expOne));
  const mLb = i64x2.sub(v128.or(mantLb, oneBits), v128.and(bigLb, expOne));
  const mLc = i64x2.sub(v128.or(mantLc, oneBits), v128.and(bigLc, expOne));
  const mLd = i64x2.sub(v128.or(mantLd, oneBits), v128.and(bigLd, expOne));
  const mH = i64x2.sub(v128.or(mantH, oneBits), v128.and(bigH, expOne));
  const mHb = i64x2.sub(v128.or(mantHb, oneBits), v128.and(bigHb, expOne));
  const mHc = i64x2.sub(v128.or(mantHc, oneBits), v128.and(bigHc, expOne));
  const mHd = i64x2.sub(v128.or(mantHd, oneBits), v128.and(bigHd, expOne));
  const one = v128.load(K_ONE);
  const sL = f64x2.div(f64x2.sub(mL, one), f64x2.add(mL, one));
  const sLb = f64x2.div(f64x2.sub(mLb, one), f64x2.add(mLb, one));
  const sLc = f64x2.div(f64x2.sub(mLc, one), f64x2.add(mLc, one));
  const sLd = f64x2.div(f64x2.sub(mLd, one), f64x2.add(mLd, one));
  const sH = f64x2.div(f64x2.sub(mH, one), f64x2.add(mH, one));
  const sHb = f64x2.div(f64x2.sub(mHb, one), f64x2.add(mHb, one));
  const sHc = f64x2.div(f64x2.sub(mHc, one), f64x2.add(mHc, one));
  const sHd = f64x2.div(f64x2.sub(mHd, one), f64x2.add(mHd, one));
  const magic = v128.load(K_MAGIC);
  const magicEm32 = v128.load(K_MAGIC_EM32);
  const em32L = f64x2.sub(v128.or(i64x2.sub(i64x2.shr_u(ndL, 52), bigL), magic), magicEm32);
  const em32Lb = f64x2.sub(v128.or(i64x2.sub(i64x2.shr_u(ndLb, 52), bigLb), magic), magicEm32);
  const em32Lc = f64x2.sub(v128.or(i64x2.sub(i64x2.shr_u(ndLc, 52), bigLc), magic), magicEm32);
  const em32Ld = f64x2.sub(v128.or(i64x2.sub(i64x2.shr_u(ndLd, 52), bigLd), magic), magicEm32);
  const em32H = f64x2.sub(v128.or(i64x2.sub(i64x2.shr_u(ndH, 52), bigH), magic), magicEm32);
  const em32Hb = f64x2.sub(v128.or(i64x2.sub(i64x2.shr_u(ndHb, 52), bigHb), magic), magicEm32);
  const em32Hc = f64x2.sub(v128.or(i64x2.sub(i64x2.shr_u(ndHc, 52), bigHc), magic), magicEm32);
  const em32Hd = f64x2.sub(v128.or(i64x2.sub(i64x2.shr_u(ndHd, 52), bigHd), magic), magicEm32);

  // Reduced angle w = (2g + 1) pi 2^-32 in (0, pi/4).
  const pi = v128.load(K_PI);
  const wL = f64x2.mul(f64x2.convert_low_i32x4_s(g4), pi);
  const wLb = f64x2.mul(f64x2.convert_low_i32x4_s(g4b), pi);
  const wLc = f64x2.mul(f64x2.convert_low_i32x4_s(g4c), pi);
  const wLd = f64x2.mul(f64x2.convert_low_i32x4_s(g4d), pi);
  const wH = f64x2.mul(f64x2.convert_low_i32x4_s(i32x4.shuffle(g4, g4, 2, 3, 2, 3)), pi);
  const wHb = f64x2.mul(f64x2.convert_low_i32x4_s(i32x4.shuffle(g4b, g4b, 2, 3, 2, 3)), pi);
  const wHc = f64x2.mul(f64x2.convert_low_i32x4_s(i32x4.shuffle(g4c, g4c, 2, 3, 2, 3)), pi);
  const wHd = f64x2.mul(f64x2.convert_low_i32x4_s(i32x4.shuffle(g4d, g4d, 2, 3, 2, 3)), pi);
  const w2L = f64x2.mul(wL, wL);
  const w2Lb = f64x2.mul(wLb, wLb);
  const w2Lc = f64x2.mul(wLc, wLc);
  const w2Ld = f64x2.mul(wLd, wLd);
  const w2H = f64x2.mul(wH, wH);
  const w2Hb = f64x2.mul(wHb, wHb);
  const w2Hc = f64x2.mul(wHc, wHc);
  const w2Hd = f64x2.mul(wHd, wHd);
  let k = v128.load(K_S11);
  let psL = f64x2.mul(w2L, k);
  let psLb = f64x2.mul(w2Lb, k);
  let psLc = f64x2.mul(w2Lc, k);
  let psLd = f64x2.mul(w2Ld, k);
  let psH = f64x2.mul(w2H, k);
  let psHb = f64x2.mul(w2Hb, k);
  let psHc = f64x2.mul(w2Hc, k);
  let psHd = f64x2.mul(w2Hd, k);
  k = v128.load(K_C12);
  let pcL = f64x2.mul(w2L, k);
  let pcLb = f64x2.mul(w2Lb, k);
  let pcLc = f64x2.mul(w2Lc, k);
  let pcLd = f64x2.mul(w2Ld, k);
  let pcH = f64x2.mul(w2H, k);
  let pcHb = f64x2.mul(w2Hb, k);
  let pcHc = f64x2.mul(w2Hc, k);
  let pcHd = f64x2.mul(w2Hd, k);
  k = v128.load(K_S9);
  psL = f64x2.mul(w2L, f64x2.add(k, psL));
  psLb = f64x2.mul(w2Lb, f64x2.add(k, psLb));
  psLc = f64x2.mul(w2Lc, f64x2.add(k, psLc));
  psLd = f64x2.mul(w2Ld, f64x2.add(k, psLd));
  psH = f64x2.mul(w2H, f64x2.add(k, psH));
  psHb = f64x2.mul(w2Hb, f64x2.add(k, psHb));
  psHc = f64x2.mul(w2Hc, f64x2.add(k, psHc));
  psHd = f64x2.mul(w2Hd, f64x2.add(k, psHd));
  k = v128.load(K_C10);
  pcL = f64x2.mul(w2L, f64x2.add(k, pcL));
  pcLb = f64x2.mul(w2Lb, f64x2.add(k, pcLb));
  pcLc = f64x2.mul(w2Lc, f64x2.add(k, pcLc));
  pcLd = f64x2.mul(w2Ld, f64x2.add(k, pcLd));
  pcH = f64x2.mul(w2H, f64x2.add(k, pcH));
  pcHb = f64x2.mul(w2Hb, f64x2.add(k, pcHb));
  pcHc = f64x2.mul(w2Hc, f64x2.add(k, pcHc));
  pcHd = f64x2.mul(w2Hd, f64x2.add(k, pcHd));
  k = v128.load(K_S7);
  psL = f64x2.mul(w2L, f64x2.add(k, psL));
  psLb = f64x2.mul(w2Lb, f64x2.add(k, psLb));
  psLc = f64x2.mul(w2Lc, f64x2.add(k, psLc));
  psLd = f64x2.mul(w2Ld, f64x2.add(k, psLd));
  psH = f64x2.mul(w2H, f64x2.add(k, psH));
  psHb = f64x2.mul(w2Hb, f64x2.add(k, psHb));
  psHc = f64x2.mul(w2Hc, f64x2.add(k, psHc));
  psHd = f64x2.mul(w2Hd, f64x2.add(k, psHd));
  k = v128.load(K_C8);
  pcL = f64x2.mul(w2L, f64x2.add(k, pcL));
  pcLb = f64x2.mul(w2Lb, f64x2.add(k, pcLb));
  pcLc = f64x2.mul(w2Lc, f64x2.add(k, pcLc));
  pcLd = f64x2.mul(w2Ld, f64x2.add(k, pcLd));
  pcH = f64x2.mul(w2H, f64x2.add(k, pcH));
  pcHb = f64x2.mul(w2Hb, f64x2.add(k, pcHb));
  pcHc = f64x2.mul(w2Hc, f64x2.add(k, pcHc));
  pcHd = f64x2.mul(w2Hd, f64x2.add(k, pcHd));
  k = v128.load(K_S5);
  psL = f64x2.mul(w2L, f64x2.add(k, psL));
  psLb = f64x2.mul(w2Lb, f64x2.add(k, psLb));
  psLc = f64x2.mul(w2Lc, f64x2.add(k, psLc));
  psLd = f64x2.mul(w2Ld, f64x2.add(k, psLd));
  psH = f64x2.mul(w2H, f64x2.add(k, psH));
  psHb = f64x2.mul(w2Hb, f64x2.add(k, psHb));
  psHc = f64x2.mul(w2Hc, f64x2.add(k, psHc));
  psHd = f64x2.mul(w2Hd, f64x2.add(k, psHd));
  k = v128.load(K_C6);
  pcL = f64x2.mul(w2L, f64x2.add(k, pcL));
  pcLb = f64x2.mul(w2Lb, f64x2.add(k, pcLb));
  pcLc = f64x2.mul(w2Lc, f64x2.add(k, pcLc));
  pcLd = f64x2.mul(w2Ld, f64x2.add(k, pcLd));
  pcH = f64x2.mul(w2H, f64x2.add(k, pcH));
  pcHb = f64x2.mul(w2Hb, f64x2.add(k, pcHb));
  pcHc = f64x2.mul(w2Hc, f64x2.add(k, pcHc));
  pcHd = f64x2.mul(w2Hd, f64x2.add(k, pcHd));
  k = v128.load(K_S3);
  psL = f64x2.mul(w2L, f64x2.add(k, psL));
  psLb = f64x2.mul(w2Lb, f64x2.add(k, psLb));
  psLc = f64x2.mul(w2Lc, f64x2.add(k, psLc));
  psLd = f64x2.mul(w2Ld, f64x2.add(k, psLd));
  psH = f64x2.mul(w2H, f64x2.add(k, psH));
  psHb = f64x2.mul(w2Hb, f64x2.add(k, psHb));
  psHc = f64x2.mul(w2Hc, f64x2.add(k, psHc));
  psHd = f64x2.mul(w2Hd, f64x2.add(k, psHd));
  k = v128.load(K_C4);
  pcL = f64x2.mul(w2L, f64x2.add(k, pcL));
  pcLb = f64x2.mul(w2Lb, f64x2.add(k, pcLb));
  pcLc = f64x2.mul(w2Lc, f64x2.add(k, pcLc));
  pcLd = f64x2.mul(w2Ld, f64x2.add(k, pcLd));
  pcH = f64x2.mul(w2H, f64x2.add(k, pcH));
  pcHb = f64x2.mul(w2Hb, f64x2.add(k, pcHb));
  pcHc = f64x2.mul(w2Hc, f64x2.add(k, pcHc));
  pcHd = f64x2.mul(w2Hd, f64x2.add(k, pcHd));
  k = v128.load(K_C2);
  pcL = f64x2.mul(w2L, f64x2.add(k, pcL));
  pcLb = f64x2.mul(w2Lb, f64x2.add(k, pcLb));
  pcLc = f64x2.mul(w2Lc, f64x2.add(k, pcLc));
  pcLd = f64x2.mul(w2Ld, f64x2.add(k, pcLd));
  pcH = f64x2.mul(w2H, f64x2.add(k, pcH));
  pcHb = f64x2.mul(w2Hb, f64x2.add(k, pcHb));
  pcHc = f64x2.mul(w2Hc, f64x2.add(k, pcHc));
  pcHd = f64x2.mul(w2Hd, f64x2.add(k, pcHd));
  const snL = f64x2.mul(wL, f64x2.add(one, psL));
  const snLb = f64x2.mul(wLb, f64x2.add(one, psLb));
  const snLc = f64x2.mul(wLc, f64x2.add(one, psLc));
  const snLd = f64x2.mul(wLd, f64x2.add(one, psLd));
  const snH = f64x2.mul(wH, f64x2.add(one, psH));
  const snHb = f64x2.mul(wHb, f64x2.add(one, psHb));
  const snHc = f64x2.mul(wHc, f64x2.add(one, psHc));
  const snHd = f64x2.mul(wHd, f64x2.add(one, psHd));
  const csL = f64x2.add(one, pcL);
  const csLb = f64x2.add(one, pcLb);
  const csLc = f64x2.add(one, pcLc);
  const csLd = f64x2.add(one, pcLd);
  const csH = f64x2.add(one, pcH);
  const csHb = f64x2.add(one, pcHb);
  const csHc = f64x2.add(one, pcHc);
  const csHd = f64x2.add(one, pcHd);

  // ln u = (2 s) P + (e - 32) LN2, P = 1 + s2 (1/3 + s2 (1/5 + ... s2 (1/13))).
  const s2L = f64x2.mul(sL, sL);
  const s2Lb = f64x2.mul(sLb, sLb);
  const s2Lc = f64x2.mul(sLc, sLc);
  const s2Ld = f64x2.mul(sLd, sLd);
  const s2H = f64x2.mul(sH, sH);
  const s2Hb = f64x2.mul(sHb, sHb);
  const s2Hc = f64x2.mul(sHc, sHc);
  const s2Hd = f64x2.mul(sHd, sHd);
  k = v128.load(K_L13);
  let pL = f64x2.mul(s2L, k);
  let pLb = f64x2.mul(s2Lb, k);
  let pLc = f64x2.mul(s2Lc, k);
  let pLd = f64x2.mul(s2Ld, k);
  let pH = f64x2.mul(s2H, k);
  let pHb = f64x2.mul(s2Hb, k);
  let pHc = f64x2.mul(s2Hc, k);
  let pHd = f64x2.mul(s2Hd, k);
  k = v128.load(K_L11);
  pL = f64x2.mul(s2L, f64x2.add(k, pL));
  pLb = f64x2.mul(s2Lb, f64x2.add(k, pLb));
  pLc = f64x2.mul(s2Lc, f64x2.add(k, pLc));
  pLd = f64x2.mul(s2Ld, f64x2.add(k, pLd));
  pH = f64x2.mul(s2H, f64x2.add(k, pH));
  pHb = f64x2.mul(s2Hb, f64x2.add(k, pHb));
  pHc = f64x2.mul(s2Hc, f64x2.add(k, pHc));
  pHd = f64x2.mul(s2Hd, f64x2.add(k, pHd));
  k = v128.load(K_L9);
  pL = f64x2.mul(s2L, f64x2.add(k, pL));
  pLb = f64x2.mul(s2Lb, f64x2.add(k, pLb));
  pLc = f64x2.mul(s2Lc, f64x2.add(k, pLc));
  pLd = f64x2.mul(s2Ld, f64x2.add(k, pLd));
  pH = f64x2.mul(s2H, f64x2.add(k, pH));
  pHb = f64x2.mul(s2Hb, f64x2.add(k, pHb));
  pHc = f64x2.mul(s2Hc, f64x2.add(k, pHc));
  pHd = f64x2.mul(s2Hd, f64x2.add(k, pHd));
  k = v128.load(K_L7);
  pL = f64x2.mul(s2L, f64x2.add(k, pL));
  pLb = f64x2.mul(s2Lb, f64x2.add(k, pLb));
  pLc = f64x2.mul(s2Lc, f64x2.add(k, pLc));
  pLd = f64x2.mul(s2Ld, f64x2.add(k, pLd));
  pH = f64x2.mul(s2H, f64x2.add(k, pH));
  pHb = f64x2.mul(s2Hb, f64x2.add(k, pHb));
  pHc = f64x2.mul(s2Hc, f64x2.add(k, pHc));
  pHd = f64x2.mul(s2Hd, f64x2.add(k, pHd));
  k = v128.load(K_L5);
  pL = f64x2.mul(s2L, f64x2.add(k, pL));
  pLb = f64x2.mul(s2Lb, f64x2.add(k, pLb));
  pLc = f64x2.mul(s2Lc, f64x2.add(k, pLc));
  pLd = f64x2.mul(s2Ld, f64x2.add(k, pLd));
  pH = f64x2.mul(s2H, f64x2.add(k, pH));
  pHb = f64x2.mul(s2Hb, f64x2.add(k, pHb));
  pHc = f64x2.mul(s2Hc, f64x2.add(k, pHc));
  pHd = f64x2.mul(s2Hd, f64x2.add(k, pHd));
  k = v128.load(K_L3);
  pL = f64x2.mul(s2L, f64x2.add(k, pL));
  pLb = f64x2.mul(s2Lb, f64x2.add(k, pLb));
  pLc = f64x2.mul(s2Lc, f64x2.add(k, pLc));
  pLd = f64x2.mul(s2Ld, f64x2.add(k, pLd));
  pH = f64x2.mul(s2H, f64x2.add(k, pH));
  pHb = f64x2.mul(s2Hb, f64x2.add(k, pHb));
  pHc = f64x2.mul(s2Hc, f64x2.add(k, pHc));
  pHd = f64x2.mul(s2Hd, f64x2.add(k, pHd));
  pL = f64x2.add(one, pL);
  pLb = f64x2.add(one, pLb);
  pLc = f64x2.add(one, pLc);
  pLd = f64x2.add(one, pLd);
  pH = f64x2.add(one, pH);
  pHb = f64x2.add(one, pHb);
  pHc = f64x2.add(one, pHc);
  pHd = f64x2.add(one, pHd);
  const ln2 = v128.load(K_LN2);
  const lL = f64x2.add(f64x2.mul(f64x2.add(sL, sL), pL), f64x2.mul(em32L, ln2));
  const lLb = f64x2.add(f64x2.mul(f64x2.add(sLb, sLb), pLb), f64x2.mul(em32Lb, ln2));
  const lLc = f64x2.add(f64x2.mul(f64x2.add(sLc, sLc), pLc), f64x2.mul(em32Lc, ln2));
  const lLd = f64x2.add(f64x2.mul(f64x2.add(sLd, sLd), pLd), f64x2.mul(em32Ld, ln2));
  const lH = f64x2.add(f64x2.mul(f64x2.add(sH, sH), pH), f64x2.mul(em32H, ln2));
  const lHb = f64x2.add(f64x2.mul(f64x2.add(sHb, sHb), pHb), f64x2.mul(em32Hb, ln2));
  const lHc = f64x2.add(f64x2.mul(f64x2.add(sHc, sHc), pHc), f64x2.mul(em32Hc, ln2));
  const lHd = f64x2.add(f64x2.mul(f64x2.add(sHd, sHd), pHd), f64x2.mul(em32Hd, ln2));
  const m2 = v128.load(K_M2);
  const rL = f64x2.sqrt(f64x2.mul(m2, lL));
  const rLb = f64x2.sqrt(f64x2.mul(m2, lLb));
  const rLc = f64x2.sqrt(f64x2.mul(m2, lLc));
  const rLd = f64x2.sqrt(f64x2.mul(m2, lLd));
  const rH = f64x2.sqrt(f64x2.mul(m2, lH));
  const rHb = f64x2.sqrt(f64x2.mul(m2, lHb));
  const rHc = f64x2.sqrt(f64x2.mul(m2, lHc));
  const rHd = f64x2.sqrt(f64x2.mul(m2, lHd));

  const rcL = f32x4.demote_f64x2_zero(f64x2.mul(rL, csL));
  const rcLb = f32x4.demote_f64x2_zero(f64x2.mul(rLb, csLb));
  const rcLc = f32x4.demote_f64x2_zero(f64x2.mul(rLc, csLc));
  const rcLd = f32x4.demote_f64x2_zero(f64x2.mul(rLd, csLd));
  const rcH = f32x4.demote_f64x2_zero(f64x2.mul(rH, csH));
  const rcHb = f32x4.demote_f64x2_zero(f64x2.mul(rHb, csHb));
  const rcHc = f32x4.demote_f64x2_zero(f64x2.mul(rHc, csHc));
  const rcHd = f32x4.demote_f64x2_zero(f64x2.mul(rHd, csHd));
  const rsL = f32x4.demote_f64x2_zero(f64x2.mul(rL, snL));
  const rsLb = f32x4.demote_f64x2_zero(f64x2.mul(rLb, snLb));
  const rsLc = f32x4.demote_f64x2_zero(f64x2.mul(rLc, snLc));
  const rsLd = f32x4.demote_f64x2_zero(f64x2.mul(rLd, snLd));
  const rsH = f32x4.demote_f64x2_zero(f64x2.mul(rH, snH));
  const rsHb = f32x4.demote_f64x2_zero(f64x2.mul(rHb, snHb));
  const rsHc = f32x4.demote_f64x2_zero(f64x2.mul(rHc, snHc));
  const rsHd = f32x4.demote_f64x2_zero(f64x2.mul(rHd, snHd));
  v128.store(dst, i32x4.shuffle(rcL, rcH, 0, 1, 4, 5));
  v128.store(dstB, i32x4.shuffle(rcLb, rcHb, 0, 1, 4, 5));
  v128.store(dstC, i32x4.shuffle(rcLc, rcHc, 0, 1, 4, 5));
  v128.store(dstD, i32x4.shuffle(rcLd, rcHd, 0, 1, 4, 5));
  v128.store(dst, i32x4.shuffle(rsL, rsH, 0, 1, 4, 5), 16);
  v128.store(dstB, i32x4.shuffle(rsLb, rsHb, 0, 1, 4, 5), 16);
  v128.store(dstC, i32x4.shuffle(rsLc, rsHc, 0, 1, 4, 5), 16);
  v128.store(dstD, i32x4.shuffle(rsLd, rsHd, 0, 1, 4, 5), 16);
}

const TMP: usize = 65536 + 4096; // 16 x v128 scratch (radiusTrig16 results, then z)
const ROUNDS: usize = 65536 + 8192; // 8 x v128: the Philox state words of `philox8`

// Box-Muller on four sets of four pairs (a, c): lanes 0..3 of (a4, c4), (a4b, c4b), (a4c, c4c),
// (a4d, c4d). Stores f32x4 cos-lanes float32(r cos theta) at dst and sin-lanes float32(r sin
// theta) at dst + 16 for the first set, then at dst + 32, + 64, + 96 for the others. The spec's
// quadrant selection (cos, sin) = (C, T), (-T, C), (-C, -T), (T, -C) with T = sigma S is applied
// after rounding, on float32 lanes: float32(r * (-x)) = -float32(r * x), so selecting and
// negating the rounded products gives the same bits as rounding the selected products.
function boxMuller16(
  a4: v128,
  c4: v128,
  a4b: v128,
  c4b: v128,
  a4c: v128,
  c4c: v128,
  a4d: v128,
  c4d: v128,
  dst: usize,
): void {
  const one = v128.load(K_ONE_I);
  radiusTrig16(
    v128.or(a4, one),
    twoGPlusOne(c4),
    v128.or(a4b, one),
    twoGPlusOne(c4b),
    v128.or(a4c, one),
    twoGPlusOne(c4c),
    v128.or(a4d, one),
    twoGPlusOne(c4d),
    TMP,
    TMP + 32,
    TMP + 64,
    TMP + 96,
  );
  quadrants(c4, v128.load(TMP), v128.load(TMP, 16), dst);
  quadrants(c4b, v128.load(TMP, 32), v128.load(TMP, 48), dst + 32);
  quadrants(c4c, v128.load(TMP, 64), v128.load(TMP, 80), dst + 64);
  quadrants(c4d, v128.load(TMP, 96), v128.load(TMP, 112), dst + 96);
}

// -1 in the lanes where the octant o = c >>> 29 is odd.
function oddOctant(c4: v128): v128 {
  return i32x4.shr_s(i32x4.shl(c4, 2), 31);
}

// 2g + 1 (< 2^30), g the angle's offset in its octant (mirrored in odd octants).
function twoGPlusOne(c4: v128): v128 {
  const f29 = v128.load(K_F29);
  const g = v128.xor(v128.and(c4, f29), v128.and(oddOctant(c4), f29));
  return v128.or(i32x4.shl(g, 1), v128.load(K_ONE_I));
}

// The quadrant selection of four pairs, from rc = float32(r C) and rs = float32(r S).
function quadrants(c4: v128, rc: v128, rs: v128, dst: usize): void {
  const oddm = oddOctant(c4);
  // k = ((o + odd) >>> 1) & 3; swap where k is odd; sign bits (bit 31) of T, of the cos factor
  // (k in {1, 2}: bit 1 of k + 1) and of the sin factor (k in {2, 3}: bit 1 of k).
  const k = v128.and(i32x4.shr_u(i32x4.sub(i32x4.shr_u(c4, 29), oddm), 1), v128.load(K_THREE));
  const swap = i32x4.shr_s(i32x4.shl(k, 31), 31);
  const sign = v128.load(K_SIGN);
  const sgnT = v128.and(oddm, sign);
  const sgnCos = v128.and(i32x4.shl(i32x4.add(k, v128.load(K_ONE_I)), 30), sign);
  const sgnSin = v128.and(i32x4.shl(k, 30), sign);
  // cos = sgnCos * (swap ? T : C); sin = sgnSin * (swap ? C : T).
  const cosv = v128.xor(v128.bitselect(rs, rc, swap), v128.xor(sgnCos, v128.and(sgnT, swap)));
  const sinv = v128.xor(v128.bitselect(rc, rs, swap), v128.xor(sgnSin, v128.andnot(sgnT, swap)));
  v128.store(dst, cosv);
  v128.store(dst, sinv, 16);
}

// Transposes [cos01, sin01, cos23, sin23] of four blocks (at src) into their 16 z values at dst.
function transpose4(src: usize, dst: usize): void {
  const c01 = v128.load(src);
  const s01 = v128.load(src, 16);
  const c23 = v128.load(src, 32);
  const s23 = v128.load(src, 48);
  const u0 = i32x4.shuffle(c01, s01, 0, 4, 1, 5); // b0: z0 z1, b1: z0 z1
  const u1 = i32x4.shuffle(c01, s01, 2, 6, 3, 7); // b2, b3
  const v0 = i32x4.shuffle(c23, s23, 0, 4, 1, 5);
  const v1 = i32x4.shuffle(c23, s23, 2, 6, 3, 7);
  v128.store(dst, i32x4.shuffle(u0, v0, 0, 1, 4, 5));
  v128.store(dst, i32x4.shuffle(u0, v0, 2, 3, 6, 7), 16);
  v128.store(dst, i32x4.shuffle(u1, v1, 0, 1, 4, 5), 32);
  v128.store(dst, i32x4.shuffle(u1, v1, 2, 3, 6, 7), 48);
}

// Philox4x32-10 of blocks b..b+7 (b = blo + 2^32 bhi): the state words (x0, x1, x2, x3) of
// blocks b..b+3 (lane j: block b + j) at ROUNDS .. ROUNDS + 48 and of blocks b+4..b+7 after them.
// Two sets of four blocks run in lockstep, so that the latency of one round's
// multiply-shuffle-xor chain is hidden by the other set.
function philox8(blo: i32, bhi: i32): void {
  const base = i32x4.splat(blo);
  const iota = v128.load(K_IOTA);
  let a0 = i32x4.add(base, iota);
  let b0 = i32x4.add(base, i32x4.add(iota, i32x4.splat(4)));
  // Carry into the high word where the low word wrapped (x0 < base unsigned).
  const hi = i32x4.splat(bhi);
  let a1 = i32x4.sub(hi, i32x4.lt_u(a0, base));
  let b1 = i32x4.sub(hi, i32x4.lt_u(b0, base));
  let a2 = v128.load(KEYV + 320);
  let a3 = v128.load(KEYV + 336);
  let b2 = a2;
  let b3 = a3;
  const m0 = v128.load(K_M0);
  const m1 = v128.load(K_M1);
  for (let r: usize = 0; r < 20; r += 2) {
    const pa0l = i64x2.extmul_low_i32x4_u(a0, m0);
    const pb0l = i64x2.extmul_low_i32x4_u(b0, m0);
    const pa0h = i64x2.extmul_high_i32x4_u(a0, m0);
    const pb0h = i64x2.extmul_high_i32x4_u(b0, m0);
    const pa1l = i64x2.extmul_low_i32x4_u(a2, m1);
    const pb1l = i64x2.extmul_low_i32x4_u(b2, m1);
    const pa1h = i64x2.extmul_high_i32x4_u(a2, m1);
    const pb1h = i64x2.extmul_high_i32x4_u(b2, m1);
    const ka = v128.load(KEYV + (r << 4));
    const kb = v128.load(KEYV + ((r + 1) << 4));
    a0 = v128.xor(v128.xor(i32x4.shuffle(pa1l, pa1h, 1, 3, 5, 7), a1), ka);
    b0 = v128.xor(v128.xor(i32x4.shuffle(pb1l, pb1h, 1, 3, 5, 7), b1), ka);
    a1 = i32x4.shuffle(pa1l, pa1h, 0, 2, 4, 6);
    b1 = i32x4.shuffle(pb1l, pb1h, 0, 2, 4, 6);
    a2 = v128.xor(v128.xor(i32x4.shuffle(pa0l, pa0h, 1, 3, 5, 7), a3), kb);
    b2 = v128.xor(v128.xor(i32x4.shuffle(pb0l, pb0h, 1, 3, 5, 7), b3), kb);
    a3 = i32x4.shuffle(pa0l, pa0h, 0, 2, 4, 6);
    b3 = i32x4.shuffle(pb0l, pb0h, 0, 2, 4, 6);
  }
  v128.store(ROUNDS, a0);
  v128.store(ROUNDS, a1, 16);
  v128.store(ROUNDS, a2, 32);
  v128.store(ROUNDS, a3, 48);
  v128.store(ROUNDS, b0, 64);
  v128.store(ROUNDS, b1, 80);
  v128.store(ROUNDS, b2, 96);
  v128.store(ROUNDS, b3, 112);
}

// z for the 32 elements of blocks b..b+7 (b = blo + 2^32 bhi) into eight f32x4 at `dst`.
function group(blo: i32, bhi: i32, dst: usize): void {
  philox8(blo, bhi);
  // Pair (x0, x1) gives lanes 0, 1 and pair (x2, x3) lanes 2, 3 of each block.
  boxMuller16(
    v128.load(ROUNDS),
    v128.load(ROUNDS, 16),
    v128.load(ROUNDS, 32),
    v128.load(ROUNDS, 48),
    v128.load(ROUNDS, 64),
    v128.load(ROUNDS, 80),
    v128.load(ROUNDS, 96),
    v128.load(ROUNDS, 112),
    TMP + 128,
  );
  transpose4(TMP + 128, dst);
  transpose4(TMP + 192, dst + 64);
}

/**
 * Writes z of blocks b0 .. b0 + nBlocks - 1 (b0 = blo + 2^32 bhi, as uint32 words) to Z:
 * element 4 (b - b0) + lane. Computes whole groups of 8 blocks (up to 28 floats past the end).
 */
export function generate(blo: i32, bhi: i32, nBlocks: i32): void {
  let b: u64 = (<u64> (<u32> bhi) << 32) | <u64> (<u32> blo);
  const end: usize = Z + (<usize> nBlocks << 4);
  for (let dst: usize = Z; dst < end; dst += 128) {
    group(<i32> b, <i32> (b >> 32), dst);
    b += 8;
  }
}

// Raw Philox4x32-10 words of blocks b..b+7 (b = blo + 2^32 bhi) into 32 uint32 at `dst`, in
// element order (block j: x0 x1 x2 x3), for uniform random bits (the stochastic rounding of
// half-precision updates, src/model/weights.ts): lane j of (x0, x1, x2, x3) is block j, a 4 x 4
// transpose per set of four blocks.
function wordsGroup(blo: i32, bhi: i32, dst: usize): void {
  philox8(blo, bhi);
  transpose4(ROUNDS, dst);
  transpose4(ROUNDS + 64, dst + 64);
}

/**
 * Writes the raw Philox words of blocks b0 .. b0 + nBlocks - 1 (b0 = blo + 2^32 bhi) to Z as
 * uint32: word 4 (b - b0) + k is x_k of block b. Whole groups of 8 blocks (up to 28 words past
 * the end).
 */
export function words(blo: i32, bhi: i32, nBlocks: i32): void {
  let b: u64 = (<u64> (<u32> bhi) << 32) | <u64> (<u32> blo);
  const end: usize = Z + (<usize> nBlocks << 4);
  for (let dst: usize = Z; dst < end; dst += 128) {
    wordsGroup(<i32> b, <i32> (b >> 32), dst);
    b += 8;
  }
}

/**
 * Fused pass on THETA[0 .. n): theta_i = float32(theta_i + float32(c * z_i)) with z_i the
 * element i of the stream starting at block b0 (so THETA[0] is element 4 b0). Whole vectors are
 * processed (up to 31 floats past n, never read back by the caller).
 */
export function perturbAdd(blo: i32, bhi: i32, n: i32, c: f32): void {
  let b: u64 = (<u64> (<u32> bhi) << 32) | <u64> (<u32> blo);
  const cv = f32x4.splat(c);
  const end: usize = THETA + (<usize> n << 2);
  for (let p: usize = THETA; p < end; p += 128) {
    group(<i32> b, <i32> (b >> 32), Z);
    for (let o: usize = 0; o < 128; o += 16) {
      v128.store(p + o, f32x4.add(v128.load(p + o), f32x4.mul(cv, v128.load(Z + o))));
    }
    b += 8;
  }
}

/** As perturbAdd with decay: theta_i = float32(float32(keep * theta_i) + float32(c * z_i)). */
export function perturbDecay(blo: i32, bhi: i32, n: i32, c: f32, keep: f32): void {
  let b: u64 = (<u64> (<u32> bhi) << 32) | <u64> (<u32> blo);
  const cv = f32x4.splat(c);
  const kv = f32x4.splat(keep);
  const end: usize = THETA + (<usize> n << 2);
  for (let p: usize = THETA; p < end; p += 128) {
    group(<i32> b, <i32> (b >> 32), Z);
    for (let o: usize = 0; o < 128; o += 16) {
      v128.store(
        p + o,
        f32x4.add(f32x4.mul(kv, v128.load(p + o)), f32x4.mul(cv, v128.load(Z + o))),
      );
    }
    b += 8;
  }
}

/**
 * The Box-Muller step alone (for tests of its edge cases): for q in [0, nQuads), reads uint32
 * a[0..3] at THETA + 32q and c[0..3] at THETA + 32q + 16 and writes the four lane_even values
 * at Z + 32q and the four lane_odd values at Z + 32q + 16.
 */
export function boxMullerPairs(nQuads: i32): void {
  for (let q: usize = 0; q < <usize> nQuads; q++) {
    const a = v128.load(THETA + (q << 5)), c = v128.load(THETA + (q << 5), 16);
    boxMuller16(a, c, a, c, a, c, a, c, TMP + 128); // one set is enough here
    v128.store(Z + (q << 5), v128.load(TMP + 128));
    v128.store(Z + (q << 5), v128.load(TMP + 144), 16);
  }
}
