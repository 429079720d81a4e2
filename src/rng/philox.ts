/**
 * Philox4x32-10, the counter-based generator of Salmon et al., "Parallel random numbers: as easy
 * as 1, 2, 3" (SC'11), bit-compatible with the Random123 reference (`philox4x32_R(10, ...)`).
 *
 * A block function: 128-bit counter (c0..c3) and 64-bit key (k0, k1) in, 128 bits (four uint32)
 * out. No state; every output depends only on its inputs, so any block can be computed alone.
 * JS has no 32x32->64 multiply: the low word is `Math.imul`, the high word is computed exactly
 * from 16-bit limbs with `Math.imul` (int32 arithmetic only, no float conversions).
 */

/** Round multipliers and Weyl key increments of Philox4x32. */
export const PHILOX_M0 = 0xd2511f53;
export const PHILOX_M1 = 0xcd9e8d57;
export const PHILOX_W0 = 0x9e3779b9;
export const PHILOX_W1 = 0xbb67ae85;

const M0_HI = PHILOX_M0 >>> 16;
const M0_LO = PHILOX_M0 & 0xffff;
const M1_HI = PHILOX_M1 >>> 16;
const M1_LO = PHILOX_M1 & 0xffff;

/**
 * High 32 bits (as int32) of the 64-bit product `x * m` for a uint32 `x` and a multiplier split
 * as `m = mHi * 2^16 + mLo`, by schoolbook 16-bit limbs in int32 arithmetic only.
 */
export function mulhi32(x: number, mHi: number, mLo: number): number {
  const xl = x & 0xffff;
  const xh = x >>> 16;
  const lh = Math.imul(xl, mHi);
  const hl = Math.imul(xh, mLo);
  const t = (Math.imul(xl, mLo) >>> 16) + (lh & 0xffff) + (hl & 0xffff);
  return (((Math.imul(xh, mHi) + (lh >>> 16)) | 0) + (((hl >>> 16) + (t >>> 16)) | 0)) | 0;
}

/** High word of `PHILOX_M0 * x` (int32). */
export function mulhiM0(x: number): number {
  return mulhi32(x, M0_HI, M0_LO);
}

/** High word of `PHILOX_M1 * x` (int32). */
export function mulhiM1(x: number): number {
  return mulhi32(x, M1_HI, M1_LO);
}

/** The ten round keys of key (k0, k1): `[k0_r, k1_r]` for r = 0..9 (int32, interleaved). */
export function philoxRoundKeys(k0: number, k1: number): Int32Array {
  const keys = new Int32Array(20);
  let ka = k0 | 0, kb = k1 | 0;
  for (let r = 0; r < 10; r++) {
    keys[2 * r] = ka;
    keys[2 * r + 1] = kb;
    ka = (ka + PHILOX_W0) | 0;
    kb = (kb + PHILOX_W1) | 0;
  }
  return keys;
}

/**
 * Philox4x32-10 of counter (c0, c1, c2, c3) under key (k0, k1); writes the four output words to
 * `out[0..3]` (as uint32). Inputs are taken modulo 2^32.
 */
export function philox4x32_10(
  c0: number,
  c1: number,
  c2: number,
  c3: number,
  k0: number,
  k1: number,
  out: Uint32Array,
): void {
  let x0 = c0 | 0, x1 = c1 | 0, x2 = c2 | 0, x3 = c3 | 0;
  let ka = k0 | 0, kb = k1 | 0;
  for (let r = 0; r < 10; r++) {
    if (r > 0) {
      ka = (ka + PHILOX_W0) | 0;
      kb = (kb + PHILOX_W1) | 0;
    }
    const hi0 = mulhiM0(x0);
    const lo0 = Math.imul(PHILOX_M0, x0);
    const hi1 = mulhiM1(x2);
    const lo1 = Math.imul(PHILOX_M1, x2);
    x0 = hi1 ^ x1 ^ ka;
    x1 = lo1;
    x2 = hi0 ^ x3 ^ kb;
    x3 = lo0;
  }
  out[0] = x0;
  out[1] = x1;
  out[2] = x2;
  out[3] = x3;
}
