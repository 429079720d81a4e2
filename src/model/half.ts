/**
 * Half precision as stored bits: bfloat16 (the top 16 bits of a float32) and IEEE float16, kept
 * as raw 16-bit patterns in a Uint16Array. Widening to float32 is exact; narrowing rounds, to
 * nearest even (`narrowNearest`, for loading a float32 checkpoint into half storage) or
 * stochastically with given random bits (`narrowStochastic`, for updates, src/model/weights.ts).
 */

/** The two half formats. */
export type HalfDtype = "bfloat16" | "float16";

let f16Table: Float32Array | undefined;

/** float16 bits -> float32 value, for all 65536 patterns. */
function float16Table(): Float32Array {
  if (f16Table) return f16Table;
  f16Table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    let v: number;
    if (exp === 0) v = frac * 2 ** -24;
    else if (exp === 31) v = frac ? NaN : Infinity;
    else v = (1 + frac / 1024) * 2 ** (exp - 15);
    f16Table[h] = sign * v;
  }
  return f16Table;
}

/** Half bits -> float32 values (exact: every half value is a float32 value). */
export function widen(src: Uint16Array, dtype: HalfDtype, out: Float32Array): void {
  if (out.length < src.length) throw new RangeError("widen: output too short");
  if (dtype === "bfloat16") {
    const bits = new Uint32Array(out.buffer, out.byteOffset, src.length);
    for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
  } else {
    const table = float16Table();
    for (let i = 0; i < src.length; i++) out[i] = table[src[i]];
  }
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** float32 -> bfloat16 bits, round to nearest even (NaN stays a quiet NaN). */
function bfloat16Nearest(x: number): number {
  f32[0] = x;
  const b = u32[0];
  if ((b & 0x7fffffff) > 0x7f800000) return (b >>> 16) | 0x40;
  return (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
}

/** float32 -> float16 bits, round to nearest even (overflow to infinity, subnormals kept). */
function float16Nearest(x: number): number {
  f32[0] = x;
  const b = u32[0];
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  let mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign; // below half the smallest subnormal
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = mant & ((1 << shift) - 1);
    let h = mant >>> shift;
    if (rest > half || (rest === half && (h & 1))) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1))) h++; // may carry into the exponent: right
  return sign | h;
}

/** float32 values -> half bits, round to nearest even (loading a float32 checkpoint). */
export function narrowNearest(
  src: Float32Array,
  dtype: HalfDtype,
  out: Uint16Array,
): void {
  const f = dtype === "bfloat16" ? bfloat16Nearest : float16Nearest;
  for (let i = 0; i < src.length; i++) out[i] = f(src[i]);
}

/**
 * float32 values -> half bits with stochastic rounding: `src[i]` becomes the half value just
 * below or just above it in magnitude, the one above with probability (|x| - below) / (above -
 * below), decided by the uint32 `bits[i]`. Exact half values stay as they are. Infinity and NaN
 * round to nearest; a value beyond the largest finite half becomes infinity only when it rounds
 * there.
 */
export function narrowStochastic(
  src: Float32Array,
  dtype: HalfDtype,
  bits: Uint32Array,
  out: Uint16Array,
): void {
  if (dtype === "bfloat16") {
    const words = new Uint32Array(src.buffer, src.byteOffset, src.length);
    for (let i = 0; i < src.length; i++) {
      const b = words[i];
      if ((b & 0x7f800000) === 0x7f800000) out[i] = bfloat16Nearest(src[i]);
      // The low 16 bits are the fraction of the gap: adding 16 random bits carries into the
      // kept bits with exactly that probability.
      else out[i] = (b + (bits[i] >>> 16)) >>> 16;
    }
    return;
  }
  const table = float16Table();
  for (let i = 0; i < src.length; i++) {
    const x = src[i];
    if (!Number.isFinite(x)) {
      out[i] = float16Nearest(x);
      continue;
    }
    // The half value toward zero, then the next one away from zero.
    let lo = float16Nearest(x);
    if (Math.abs(table[lo]) > Math.abs(x)) lo--;
    const vLo = Math.abs(table[lo]);
    if (vLo === Math.abs(x)) {
      out[i] = lo;
      continue;
    }
    const vHi = Math.abs(table[lo + 1]); // Infinity past the largest finite value
    const p = (Math.abs(x) - vLo) / (vHi - vLo); // 0 when vHi is Infinity
    out[i] = bits[i] / 4294967296 < p ? lo + 1 : lo;
  }
}
