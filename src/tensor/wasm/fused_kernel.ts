// @ts-nocheck: AssemblyScript, compiled by asc (v128, f32x4, usize, load... are asc builtins).
// No decorators (deno fmt would drop them): binaryen -O3 decides the inlining.
//
// Fused kernels of the OPT forward, in place on the TensorFlow.js WASM heap: the LM head's column
// log-sum-exp, causal attention, LayerNorm over axis 0 and the embeddings, in the transposed layout.
//
// AssemblyScript, compiled by ./build.ts with --importMemory: the module has no memory of its
// own and no data segments; it is instantiated on the memory of @tensorflow/tfjs-backend-wasm
// and reads tensors where tfjs kernels wrote them (no copy, no transpose). Outputs and scratch
// buffers are tensors the caller allocated on the same heap (src/tensor/fused.ts).

// Cephes expf, f32x4: x = n ln2 + r, |r| <= ln2 / 2, degree-6 polynomial, 2^n by exponent bits.
// Inputs here are <= 0 (logit minus its column maximum); they are clamped at -87.33 so 2^n
// stays normal. n = round-to-nearest-even(x log2 e) comes from adding 1.5 * 2^23 (the float's
// low mantissa bits are then n), which also gives 2^n's exponent bits by one shift: fewer and
// cheaper instructions than f32x4.nearest + i32x4.trunc_sat, with the same n. pmax is one
// machine max and lets a NaN x through (pmax(a, b) = a < b ? b : a), so NaN propagates.
//
// Multiply-adds here are relaxed SIMD's `relaxed_madd` (a * b + c): one fused instruction where
// the CPU has FMA (every x86-64 CPU since 2013, every arm64), else a multiply then an add. So the
// last bits depend on the CPU, as OpenBLAS' kernels do: `fusesMultiplyAdd` says which, and
// src/tensor/blas.ts `matMulIdentity` reports it so that workers on different CPUs are told
// apart. The z kernel (src/rng) uses none: z must be the same on every machine.

const MAGIC: f32 = 12582912.0; // 1.5 * 2^23
const EXP_LO: f32 = -87.33654; // exp(EXP_LO) is the smallest normal float's neighbourhood
const LOG2E: f32 = 1.44269504088896341;
const LN2_HI: f32 = 0.693359375;
const LN2_LO: f32 = -2.12194440e-4;
const P0: f32 = 1.9875691500e-4;
const P1: f32 = 1.3981999507e-3;
const P2: f32 = 8.3334519073e-3;
const P3: f32 = 4.1665795894e-2;
const P4: f32 = 1.6666665459e-1;
const P5: f32 = 5.0000001201e-1;
const ONE_BITS: i32 = 0x3f800000;

function exp4(x: v128): v128 {
  return exp4k(
    x,
    f32x4.splat(EXP_LO),
    f32x4.splat(LOG2E),
    f32x4.splat(MAGIC),
    f32x4.splat(LN2_HI),
    f32x4.splat(LN2_LO),
    f32x4.splat(P0),
    f32x4.splat(P1),
    f32x4.splat(P2),
    f32x4.splat(P3),
    f32x4.splat(P4),
    f32x4.splat(P5),
    f32x4.splat(1.0),
    i32x4.splat(ONE_BITS),
  );
}

function exp1(x: f32): f32 {
  return f32x4.extract_lane(exp4(f32x4.splat(x)), 0);
}

/**
 * 1 when relaxed_madd is fused on this CPU: (1 + 2^-23)^2 - (1 + 2^-22) is 2^-46 exactly, and 0
 * when the product is rounded first.
 */
export function fusesMultiplyAdd(): i32 {
  const a = f32x4.splat(<f32> 1.00000011920928955078125);
  const c = f32x4.splat(<f32> -1.0000002384185791015625);
  return f32x4.extract_lane(f32x4.relaxed_madd(a, a, c), 0) != 0 ? 1 : 0;
}

// exp4 with its constants as arguments. V8 rematerialises every v128.const at each use inside a
// loop (several instructions each); constants loaded from memory into locals before the loop
// stay in registers or one load away, which made colSumExp 1.9x faster. The loop kernels write
// them to 208 bytes of scratch memory (`storeExpConstants`) and load them back: binaryen cannot
// fold a load, so they stay loads. exp4 passes them as v128.const (short loops).

function storeExpConstants(k: usize): void {
  v128.store(k, f32x4.splat(EXP_LO));
  v128.store(k, f32x4.splat(LOG2E), 16);
  v128.store(k, f32x4.splat(MAGIC), 32);
  v128.store(k, f32x4.splat(LN2_HI), 48);
  v128.store(k, f32x4.splat(LN2_LO), 64);
  v128.store(k, f32x4.splat(P0), 80);
  v128.store(k, f32x4.splat(P1), 96);
  v128.store(k, f32x4.splat(P2), 112);
  v128.store(k, f32x4.splat(P3), 128);
  v128.store(k, f32x4.splat(P4), 144);
  v128.store(k, f32x4.splat(P5), 160);
  v128.store(k, f32x4.splat(1.0), 176);
  v128.store(k, i32x4.splat(ONE_BITS), 192);
}

function exp4k(
  x: v128,
  lo: v128,
  log2e: v128,
  magic: v128,
  ln2hi: v128,
  ln2lo: v128,
  p0: v128,
  p1: v128,
  p2: v128,
  p3: v128,
  p4: v128,
  p5: v128,
  one: v128,
  bias: v128,
): v128 {
  x = f32x4.pmax(x, lo);
  const t = f32x4.relaxed_madd(x, log2e, magic);
  const n = f32x4.sub(t, magic);
  let r = f32x4.relaxed_nmadd(n, ln2hi, x);
  r = f32x4.relaxed_nmadd(n, ln2lo, r);
  const z = f32x4.mul(r, r);
  let y = p0;
  y = f32x4.relaxed_madd(y, r, p1);
  y = f32x4.relaxed_madd(y, r, p2);
  y = f32x4.relaxed_madd(y, r, p3);
  y = f32x4.relaxed_madd(y, r, p4);
  y = f32x4.relaxed_madd(y, r, p5);
  y = f32x4.add(f32x4.relaxed_madd(y, z, r), one);
  // t's bits are MAGIC's plus n in the low mantissa bits; << 23 leaves n << 23 (mod 2^32).
  const e = i32x4.add(i32x4.shl(t, 23), bias);
  return f32x4.mul(y, e);
}

/** Columns per group in the column kernels: four f32x4 registers, independent chains. */
const GROUP = 16;

/** max(a, b) of one column, NaN when either is NaN. */
function max1(a: f32, b: f32): f32 {
  return a != a || b != b ? NaN : max(a, b);
}

/**
 * LM head, pass 1: m[p] = max over rows of L[v, p], L `[V, P]` row-major logits as the matMul
 * wrote them, m: P floats. Pass 2 (colSumExp) gives s[p] = sum_v exp(L[v, p] - m[p]); the caller
 * forms lse[p] = m[p] + log(s[p]). Columns go in groups of GROUP down all rows, their maxima in
 * registers, by f32x4.pmax (one machine max; f32x4.max's NaN rule costs several): a NaN may be
 * skipped here, but then its exp in pass 2 is NaN, and so is s[p].
 */
export function colMax(L: usize, V: i32, P: i32, m: usize): void {
  const stride = <usize> P << 2;
  let p = 0;
  for (; p + GROUP <= P; p += GROUP) {
    let at = L + (<usize> p << 2);
    let m0 = v128.load(at), m1 = v128.load(at, 16), m2 = v128.load(at, 32);
    let m3 = v128.load(at, 48);
    for (let v = 1; v < V; v++) {
      at += stride;
      m0 = f32x4.pmax(m0, v128.load(at));
      m1 = f32x4.pmax(m1, v128.load(at, 16));
      m2 = f32x4.pmax(m2, v128.load(at, 32));
      m3 = f32x4.pmax(m3, v128.load(at, 48));
    }
    const o = m + (<usize> p << 2);
    v128.store(o, m0);
    v128.store(o, m1, 16);
    v128.store(o, m2, 32);
    v128.store(o, m3, 48);
  }
  for (; p < P; p++) {
    let at = L + (<usize> p << 2);
    let best = load<f32>(at);
    for (let v = 1; v < V; v++) {
      at += stride;
      best = max1(best, load<f32>(at));
    }
    store<f32>(m + (<usize> p << 2), best);
  }
}

const BLOCK = 128;

// 2^u for colSumExp (Cephes exp2f, f32x4): u = n + f, n = round(u), |f| <= 1/2,
// 2^f = 1 + f P(f) with P of degree 5, 2^n by exponent bits; u is clamped at -126 so 2^n stays
// normal. colSumExp forms u = L log2(e) - m log2(e) in one fused multiply-add, so this exp costs
// 15 vector operations per four logits where exp4k costs 18.
const U_LO: f32 = -126.0;
const Q0: f32 = 1.535336188319500e-4;
const Q1: f32 = 1.339887440266574e-3;
const Q2: f32 = 9.618437357674640e-3;
const Q3: f32 = 5.550332471162809e-2;
const Q4: f32 = 2.402264791363012e-1;
const Q5: f32 = 6.931472028550421e-1;

function storeExp2Constants(k: usize): void {
  v128.store(k, f32x4.splat(U_LO));
  v128.store(k, f32x4.splat(LOG2E), 16);
  v128.store(k, f32x4.splat(MAGIC), 32);
  v128.store(k, f32x4.splat(Q0), 48);
  v128.store(k, f32x4.splat(Q1), 64);
  v128.store(k, f32x4.splat(Q2), 80);
  v128.store(k, f32x4.splat(Q3), 96);
  v128.store(k, f32x4.splat(Q4), 112);
  v128.store(k, f32x4.splat(Q5), 128);
  v128.store(k, f32x4.splat(1.0), 144);
  v128.store(k, i32x4.splat(ONE_BITS), 160);
}

function exp2k(
  u: v128,
  lo: v128,
  magic: v128,
  q0: v128,
  q1: v128,
  q2: v128,
  q3: v128,
  q4: v128,
  q5: v128,
  one: v128,
  bias: v128,
): v128 {
  u = f32x4.pmax(u, lo);
  const t = f32x4.add(u, magic);
  const f = f32x4.sub(u, f32x4.sub(t, magic));
  let y = f32x4.relaxed_madd(q0, f, q1);
  y = f32x4.relaxed_madd(y, f, q2);
  y = f32x4.relaxed_madd(y, f, q3);
  y = f32x4.relaxed_madd(y, f, q4);
  y = f32x4.relaxed_madd(y, f, q5);
  y = f32x4.relaxed_madd(y, f, one);
  // t's bits are MAGIC's plus n in the low mantissa bits; << 23 leaves n << 23 (mod 2^32).
  return f32x4.mul(y, i32x4.add(i32x4.shl(t, 23), bias));
}

/**
 * s[p] = sum over rows of exp(L[v, p] - m[p]) as float64 (s: P doubles, 8-byte aligned): per
 * column, float32 partial sums over blocks of BLOCK rows in row order, each added to the
 * float64 sum in block order. Columns go in groups of GROUP down the rows, sums in registers;
 * exp(L - m) = 2^(L log2 e - m log2 e) (`exp2k`). `k`: 208 bytes of scratch for its constants.
 */
export function colSumExp(L: usize, V: i32, P: i32, m: usize, k: usize, s: usize): void {
  const stride = <usize> P << 2;
  storeExp2Constants(k);
  const lo = v128.load(k), log2e = v128.load(k, 16), magic = v128.load(k, 32);
  const q0 = v128.load(k, 48), q1 = v128.load(k, 64), q2 = v128.load(k, 80);
  const q3 = v128.load(k, 96), q4 = v128.load(k, 112), q5 = v128.load(k, 128);
  const one = v128.load(k, 144), bias = v128.load(k, 160);
  let p = 0;
  for (; p + GROUP <= P; p += GROUP) {
    // c = -m log2(e) per column
    const mo = m + (<usize> p << 2);
    const c0 = f32x4.neg(f32x4.mul(v128.load(mo), log2e));
    const c1 = f32x4.neg(f32x4.mul(v128.load(mo, 16), log2e));
    const c2 = f32x4.neg(f32x4.mul(v128.load(mo, 32), log2e));
    const c3 = f32x4.neg(f32x4.mul(v128.load(mo, 48), log2e));
    const so = s + (<usize> p << 3);
    for (let i = 0; i < GROUP; i++) store<f64>(so + (<usize> i << 3), 0);
    let at = L + (<usize> p << 2);
    for (let v0 = 0; v0 < V; v0 += BLOCK) {
      const v1 = min(V, v0 + BLOCK);
      let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
      for (let v = v0; v < v1; v++) {
        a0 = f32x4.add(
          a0,
          exp2k(
            f32x4.relaxed_madd(v128.load(at), log2e, c0),
            lo,
            magic,
            q0,
            q1,
            q2,
            q3,
            q4,
            q5,
            one,
            bias,
          ),
        );
        a1 = f32x4.add(
          a1,
          exp2k(
            f32x4.relaxed_madd(v128.load(at, 16), log2e, c1),
            lo,
            magic,
            q0,
            q1,
            q2,
            q3,
            q4,
            q5,
            one,
            bias,
          ),
        );
        a2 = f32x4.add(
          a2,
          exp2k(
            f32x4.relaxed_madd(v128.load(at, 32), log2e, c2),
            lo,
            magic,
            q0,
            q1,
            q2,
            q3,
            q4,
            q5,
            one,
            bias,
          ),
        );
        a3 = f32x4.add(
          a3,
          exp2k(
            f32x4.relaxed_madd(v128.load(at, 48), log2e, c3),
            lo,
            magic,
            q0,
            q1,
            q2,
            q3,
            q4,
            q5,
            one,
            bias,
          ),
        );
        at += stride;
      }
      addLanes(so, a0);
      addLanes(so + 32, a1);
      addLanes(so + 64, a2);
      addLanes(so + 96, a3);
    }
    for (let i = 0; i < GROUP; i++) {
      correctSum(so + (<usize> i << 3), load<f32>(mo + (<usize> i << 2)));
    }
  }
  // The last P % GROUP columns one at a time, with the same exp.
  for (; p < P; p++) {
    const c = f32x4.neg(f32x4.mul(f32x4.splat(load<f32>(m + (<usize> p << 2))), log2e));
    const so = s + (<usize> p << 3);
    let total: f64 = 0;
    let at = L + (<usize> p << 2);
    for (let v0 = 0; v0 < V; v0 += BLOCK) {
      const v1 = min(V, v0 + BLOCK);
      let a: f32 = 0;
      for (let v = v0; v < v1; v++) {
        const e = exp2k(
          f32x4.relaxed_madd(f32x4.splat(load<f32>(at)), log2e, c),
          lo,
          magic,
          q0,
          q1,
          q2,
          q3,
          q4,
          q5,
          one,
          bias,
        );
        a += f32x4.extract_lane(e, 0);
        at += stride;
      }
      total += <f64> a;
    }
    store<f64>(so, total);
    correctSum(so, load<f32>(m + (<usize> p << 2)));
  }
}

/**
 * The elements' exponents u = L log2e + c use c = float32(-m log2e), off from the exact
 * -m log2e (a product of two floats, exact in float64) by cl; every term is then off by the
 * same factor 2^cl, applied to the column's sum here: 2^cl = 1 + cl ln 2 to 1e-12, as
 * |cl| <= 2^-24 |m log2e|. (Without it the log-sum-exp was off by up to 1e-6 at m ~ 28.)
 */
function correctSum(s: usize, m: f32): void {
  const c: f32 = -(m * LOG2E);
  const cl: f64 = -(<f64> m * <f64> LOG2E) - <f64> c;
  store<f64>(s, load<f64>(s) * (1 + cl * LN2_F64));
}

const LN2_F64: f64 = 0.6931471805599453;

/** s[0..3] += the four float32 lanes of a, as float64. */
function addLanes(s: usize, a: v128): void {
  store<f64>(s, load<f64>(s) + <f64> f32x4.extract_lane(a, 0));
  store<f64>(s, load<f64>(s, 8) + <f64> f32x4.extract_lane(a, 1), 8);
  store<f64>(s, load<f64>(s, 16) + <f64> f32x4.extract_lane(a, 2), 16);
  store<f64>(s, load<f64>(s, 24) + <f64> f32x4.extract_lane(a, 3), 24);
}

const F32_MIN: f32 = -3.4028234663852886e38;

/**
 * Causal self-attention of one layer in the transposed layout, for every (row b, head h):
 * q, k, v, out are `[D, N]` float32 (D = H * hd hidden rows, N = B * S tokens, token b * S + s),
 * q already scaled by hd^-0.5; keyMask is N int32 (1 = real token). As Hugging Face OPT:
 * x[i, j] = max(q_i . k_j + (j <= i && mask_j ? 0 : float32 min), float32 min),
 * p = softmax_j(x[i, :]) (a fully masked row is uniform over its S keys, as there),
 * out[:, i] = sum_j p[i, j] v[:, j]. scratch: S * S + 3 * hd * S floats. Only batch rows
 * [bFrom, bTo) are done (the threads of src/tensor/fused.ts share a batch).
 *
 * A head's q and k blocks are first packed contiguously ([hd, S]), its v block transposed
 * ([S, hd]): read in place their rows are N floats apart, and rows 4 KiB apart alias in L1.
 * A query with a visible key only looks at keys j <= i: the others get exp(float32 min - max),
 * which is below 1.2e-38 (exactly 0 in float64), so they are left out of the sum and the
 * weighted sum, which halves the work. A query with none gets the uniform average over all S.
 */
export function attention(
  q: usize,
  k: usize,
  v: usize,
  keyMask: usize,
  out: usize,
  B: i32,
  S: i32,
  H: i32,
  hd: i32,
  scratch: usize,
  bFrom: i32,
  bTo: i32,
): void {
  const N = B * S;
  const rowBytes = <usize> N << 2;
  const sRow = <usize> S << 2;
  const hdRow = <usize> hd << 2;
  for (let b = bFrom; b < bTo; b++) {
    const c0 = <usize> (b * S) << 2; // byte offset of this row's first token in a [., N] row
    const mrow = keyMask + c0;
    for (let h = 0; h < H; h++) {
      const d0 = <usize> (h * hd) * rowBytes; // byte offset of this head's first hidden row
      const oh = out + d0 + c0;
      const qh = scratch + <usize> S * sRow,
        kh = qh + <usize> hd * sRow,
        vt = kh + <usize> hd * sRow;
      for (let d = 0; d < hd; d++) {
        const r = <usize> d * rowBytes + d0 + c0, w = <usize> d * sRow;
        memory.copy(qh + w, q + r, sRow);
        memory.copy(kh + w, k + r, sRow);
        for (let j = 0; j < S; j++) {
          store<f32>(
            vt + <usize> j * hdRow + (<usize> d << 2),
            load<f32>(v + r + (<usize> j << 2)),
          );
        }
      }
      let seen = false; // whether some key j <= i is visible
      for (let i = 0; i < S; i++) {
        const srow = scratch + <usize> i * sRow;
        seen = seen || load<i32>(mrow + (<usize> i << 2)) == 1;
        if (!seen) {
          uniformAverage(vt, S, hd, oh + (<usize> i << 2), rowBytes);
          continue;
        }
        const limit = i + 1;
        scoreRow(qh + (<usize> i << 2), kh, S, hd, limit, srow);
        // mask, clamp, max
        let m: f32 = -Infinity;
        for (let j = 0; j < limit; j++) {
          const o = <usize> j << 2;
          let x = load<f32>(srow + o) + (load<i32>(mrow + o) == 1 ? <f32> 0 : F32_MIN);
          x = x != x ? x : max(x, F32_MIN);
          store<f32>(srow + o, x);
          m = x != x || m != m ? NaN : max(m, x);
        }
        // exp and sum, four at a time
        const mv = f32x4.splat(m);
        let sv = f32x4.splat(0);
        let j = 0;
        for (; j + 4 <= limit; j += 4) {
          const o = <usize> j << 2;
          const e = exp4(f32x4.sub(v128.load(srow + o), mv));
          v128.store(srow + o, e);
          sv = f32x4.add(sv, e);
        }
        let sum: f32 = f32x4.extract_lane(sv, 0) + f32x4.extract_lane(sv, 1) +
          (f32x4.extract_lane(sv, 2) + f32x4.extract_lane(sv, 3));
        for (; j < limit; j++) {
          const o = <usize> j << 2;
          const e = exp1(load<f32>(srow + o) - m);
          store<f32>(srow + o, e);
          sum += e;
        }
        weightedSum(srow, <f32> 1 / sum, vt, limit, hd, oh + (<usize> i << 2), rowBytes);
      }
    }
  }
}

/**
 * The probabilities of one (row, head) of `attention` above, in place on scores `[S, S]` (row i:
 * q_i . k_j for every key j, as OpenBLAS wrote them; src/tensor/fused.ts forms the weighted sum
 * with OpenBLAS too). mrow: the row's S int32 key mask; k: 208 bytes of scratch for the exp
 * constants. Row i becomes softmax_j(x[i, j]) over j <= i and 0 for j > i (exp(float32 min -
 * max) is below 1.2e-38, as `attention` leaves out), or 1 / S for every key when no key j <= i
 * is visible (the uniform average, as Hugging Face).
 */
export function attentionProbs(scores: usize, S: i32, mrow: usize, k: usize): void {
  storeExpConstants(k);
  const lo = v128.load(k), log2e = v128.load(k, 16), magic = v128.load(k, 32);
  const ln2hi = v128.load(k, 48), ln2lo = v128.load(k, 64);
  const p0 = v128.load(k, 80), p1 = v128.load(k, 96), p2 = v128.load(k, 112);
  const p3 = v128.load(k, 128), p4 = v128.load(k, 144), p5 = v128.load(k, 160);
  const one = v128.load(k, 176), bias = v128.load(k, 192);
  const fmin = f32x4.splat(F32_MIN), ones = i32x4.splat(1), zero = f32x4.splat(0);
  const sRow = <usize> S << 2;
  let seen = false; // whether some key j <= i is visible
  for (let i = 0; i < S; i++) {
    const srow = scores + <usize> i * sRow;
    seen = seen || load<i32>(mrow + (<usize> i << 2)) == 1;
    if (!seen) {
      const u = <f32> 1 / <f32> S;
      for (let j = 0; j < S; j++) store<f32>(srow + (<usize> j << 2), u);
      continue;
    }
    const limit = i + 1, limit4 = limit & ~3;
    // mask (float32 min added to a hidden key), clamp at float32 min, max; four at a time. pmax
    // keeps a NaN x but may drop it from the max: its exp below is NaN either way, and so is
    // the row's sum.
    let mv = f32x4.splat(-Infinity);
    let j = 0;
    for (; j < limit4; j += 4) {
      const o = <usize> j << 2;
      const hidden = v128.bitselect(zero, fmin, i32x4.eq(v128.load(mrow + o), ones));
      const x = f32x4.pmax(f32x4.add(v128.load(srow + o), hidden), fmin);
      v128.store(srow + o, x);
      mv = f32x4.pmax(mv, x);
    }
    let m: f32 = max(
      max(f32x4.extract_lane(mv, 0), f32x4.extract_lane(mv, 1)),
      max(f32x4.extract_lane(mv, 2), f32x4.extract_lane(mv, 3)),
    );
    for (; j < limit; j++) {
      const o = <usize> j << 2;
      let x = load<f32>(srow + o) + (load<i32>(mrow + o) == 1 ? <f32> 0 : F32_MIN);
      x = x != x ? x : max(x, F32_MIN);
      store<f32>(srow + o, x);
      m = x != x || m != m ? NaN : max(m, x);
    }
    // exp and sum, four at a time
    const mm = f32x4.splat(m);
    let sv = f32x4.splat(0);
    for (j = 0; j < limit4; j += 4) {
      const o = <usize> j << 2;
      const e = exp4k(
        f32x4.sub(v128.load(srow + o), mm),
        lo,
        log2e,
        magic,
        ln2hi,
        ln2lo,
        p0,
        p1,
        p2,
        p3,
        p4,
        p5,
        one,
        bias,
      );
      v128.store(srow + o, e);
      sv = f32x4.add(sv, e);
    }
    let sum: f32 = f32x4.extract_lane(sv, 0) + f32x4.extract_lane(sv, 1) +
      (f32x4.extract_lane(sv, 2) + f32x4.extract_lane(sv, 3));
    for (; j < limit; j++) {
      const o = <usize> j << 2;
      const e = exp1(load<f32>(srow + o) - m);
      store<f32>(srow + o, e);
      sum += e;
    }
    // scale; zeros after the limit
    const scale = <f32> 1 / sum;
    const sc = f32x4.splat(scale);
    for (j = 0; j < limit4; j += 4) {
      const o = <usize> j << 2;
      v128.store(srow + o, f32x4.mul(v128.load(srow + o), sc));
    }
    for (; j < limit; j++) {
      const o = <usize> j << 2;
      store<f32>(srow + o, load<f32>(srow + o) * scale);
    }
    memory.fill(srow + (<usize> limit << 2), 0, <usize> (S - limit) << 2);
  }
}

/** srow[j] = q_i . k_j for j < limit (a few more up to the next group may be written too). */
function scoreRow(qi: usize, kh: usize, S: i32, hd: i32, limit: i32, srow: usize): void {
  const sRow = <usize> S << 2;
  let j = 0;
  for (; j < limit && j + 16 <= S; j += 16) {
    const o = <usize> j << 2;
    let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
    for (let d = 0; d < hd; d++) {
      const r = <usize> d * sRow;
      const x = f32x4.splat(load<f32>(qi + r));
      const kr = kh + r + o;
      a0 = f32x4.relaxed_madd(x, v128.load(kr), a0);
      a1 = f32x4.relaxed_madd(x, v128.load(kr, 16), a1);
      a2 = f32x4.relaxed_madd(x, v128.load(kr, 32), a2);
      a3 = f32x4.relaxed_madd(x, v128.load(kr, 48), a3);
    }
    v128.store(srow + o, a0);
    v128.store(srow + o, a1, 16);
    v128.store(srow + o, a2, 32);
    v128.store(srow + o, a3, 48);
  }
  for (; j < limit && j + 4 <= S; j += 4) {
    const o = <usize> j << 2;
    let a0 = f32x4.splat(0);
    for (let d = 0; d < hd; d++) {
      const r = <usize> d * sRow;
      a0 = f32x4.relaxed_madd(f32x4.splat(load<f32>(qi + r)), v128.load(kh + r + o), a0);
    }
    v128.store(srow + o, a0);
  }
  for (; j < limit; j++) {
    const o = <usize> j << 2;
    let a: f32 = 0;
    for (let d = 0; d < hd; d++) {
      const r = <usize> d * sRow;
      a += load<f32>(qi + r) * load<f32>(kh + r + o);
    }
    store<f32>(srow + o, a);
  }
}

/**
 * out[d * rowBytes] = scale * sum_{j < limit} e[j] vt[j, d] for d < hd (vt `[S, hd]`), eight
 * f32x4 accumulators (32 hidden units) at a time, summed over j in order.
 */
function weightedSum(
  e: usize,
  scale: f32,
  vt: usize,
  limit: i32,
  hd: i32,
  out: usize,
  rowBytes: usize,
): void {
  const hdRow = <usize> hd << 2;
  const sc = f32x4.splat(scale);
  let d = 0;
  for (; d + 32 <= hd; d += 32) {
    let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
    let a4 = f32x4.splat(0), a5 = f32x4.splat(0), a6 = f32x4.splat(0), a7 = f32x4.splat(0);
    let vr = vt + (<usize> d << 2);
    for (let j = 0; j < limit; j++) {
      const p = f32x4.splat(load<f32>(e + (<usize> j << 2)));
      a0 = f32x4.relaxed_madd(p, v128.load(vr), a0);
      a1 = f32x4.relaxed_madd(p, v128.load(vr, 16), a1);
      a2 = f32x4.relaxed_madd(p, v128.load(vr, 32), a2);
      a3 = f32x4.relaxed_madd(p, v128.load(vr, 48), a3);
      a4 = f32x4.relaxed_madd(p, v128.load(vr, 64), a4);
      a5 = f32x4.relaxed_madd(p, v128.load(vr, 80), a5);
      a6 = f32x4.relaxed_madd(p, v128.load(vr, 96), a6);
      a7 = f32x4.relaxed_madd(p, v128.load(vr, 112), a7);
      vr += hdRow;
    }
    const o = out + <usize> d * rowBytes;
    storeColumn(o, f32x4.mul(a0, sc), rowBytes);
    storeColumn(o + 4 * rowBytes, f32x4.mul(a1, sc), rowBytes);
    storeColumn(o + 8 * rowBytes, f32x4.mul(a2, sc), rowBytes);
    storeColumn(o + 12 * rowBytes, f32x4.mul(a3, sc), rowBytes);
    storeColumn(o + 16 * rowBytes, f32x4.mul(a4, sc), rowBytes);
    storeColumn(o + 20 * rowBytes, f32x4.mul(a5, sc), rowBytes);
    storeColumn(o + 24 * rowBytes, f32x4.mul(a6, sc), rowBytes);
    storeColumn(o + 28 * rowBytes, f32x4.mul(a7, sc), rowBytes);
  }
  for (; d + 4 <= hd; d += 4) {
    let a0 = f32x4.splat(0);
    let vr = vt + (<usize> d << 2);
    for (let j = 0; j < limit; j++) {
      a0 = f32x4.relaxed_madd(f32x4.splat(load<f32>(e + (<usize> j << 2))), v128.load(vr), a0);
      vr += hdRow;
    }
    storeColumn(out + <usize> d * rowBytes, f32x4.mul(a0, sc), rowBytes);
  }
  for (; d < hd; d++) {
    let a: f32 = 0;
    let vr = vt + (<usize> d << 2);
    for (let j = 0; j < limit; j++) {
      a += load<f32>(e + (<usize> j << 2)) * load<f32>(vr);
      vr += hdRow;
    }
    store<f32>(out + <usize> d * rowBytes, a * scale);
  }
}

/** The four lanes of x to four rows (rowBytes apart) of one column. */
function storeColumn(at: usize, x: v128, rowBytes: usize): void {
  store<f32>(at, f32x4.extract_lane(x, 0));
  store<f32>(at + rowBytes, f32x4.extract_lane(x, 1));
  store<f32>(at + 2 * rowBytes, f32x4.extract_lane(x, 2));
  store<f32>(at + 3 * rowBytes, f32x4.extract_lane(x, 3));
}

/** A query with no visible key: out[d] = (1/S) sum over all S keys of vt[j, d]. */
function uniformAverage(vt: usize, S: i32, hd: i32, out: usize, rowBytes: usize): void {
  const hdRow = <usize> hd << 2;
  const p = <f32> 1 / <f32> S;
  for (let d = 0; d < hd; d++) {
    let a: f32 = 0;
    let vr = vt + (<usize> d << 2);
    for (let j = 0; j < S; j++) {
      a += p * load<f32>(vr);
      vr += hdRow;
    }
    store<f32>(out + <usize> d * rowBytes, a);
  }
}

/**
 * Token + position embeddings into the transposed layout: out[e, n] = tok[ids[n], e] +
 * pos[rows[n], e] (float32), tok and pos row-major `[*, E]`, ids and rows N int32 (the caller
 * checks their range), out `[E, N]`.
 */
export function embedT(
  tok: usize,
  pos: usize,
  ids: usize,
  rows: usize,
  N: i32,
  E: i32,
  out: usize,
): void {
  const rowBytes = <usize> N << 2;
  const eBytes = <usize> E << 2;
  // Sixteen tokens at a time: each output row then gets a whole cache line per store run
  // (one column at a time wrote 4 bytes per row, rows 4 KiB apart).
  for (let n0 = 0; n0 < N; n0 += EMBED_TILE) {
    const n1 = min(N, n0 + EMBED_TILE);
    for (let e = 0; e < E; e++) {
      const o = out + <usize> e * rowBytes;
      const eo = <usize> e << 2;
      for (let n = n0; n < n1; n++) {
        const t = tok + <usize> load<i32>(ids + (<usize> n << 2)) * eBytes;
        const p = pos + <usize> load<i32>(rows + (<usize> n << 2)) * eBytes;
        store<f32>(o + (<usize> n << 2), load<f32>(t + eo) + load<f32>(p + eo));
      }
    }
  }
}

const EMBED_TILE = 16;

/** out `[D, P]` = columns cols[0..P) (P int32) of x `[D, N]`; each is checked by the caller. */
export function gatherColumns(x: usize, D: i32, N: i32, cols: usize, P: i32, out: usize): void {
  for (let d = 0; d < D; d++) {
    const r = x + (<usize> d * <usize> N << 2), o = out + (<usize> d * <usize> P << 2);
    for (let p = 0; p < P; p++) {
      store<f32>(
        o + (<usize> p << 2),
        load<f32>(r + (<usize> load<i32>(cols + (<usize> p << 2)) << 2)),
      );
    }
  }
}

/**
 * LayerNorm over axis 0 of x `[D, N]` (each column one token), as torch: mean and biased
 * variance in float32, y = ((x - mean) * (1 / sqrt(var + eps))) * w[d] + b[d]. w, b: D floats;
 * out `[D, N]`; scratch: 2 N floats.
 */
export function layerNormT(
  x: usize,
  D: i32,
  N: i32,
  w: usize,
  b: usize,
  eps: f32,
  out: usize,
  scratch: usize,
): void {
  const rowBytes = <usize> N << 2;
  const N4 = N & ~3;
  const mean = scratch, inv = scratch + rowBytes;
  const fD = <f32> D;
  memory.fill(mean, 0, rowBytes);
  memory.fill(inv, 0, rowBytes);
  for (let d = 0; d < D; d++) {
    const r = x + <usize> d * rowBytes;
    let n = 0;
    for (; n < N4; n += 4) {
      const o = <usize> n << 2;
      v128.store(mean + o, f32x4.add(v128.load(mean + o), v128.load(r + o)));
    }
    for (; n < N; n++) {
      const o = <usize> n << 2;
      store<f32>(mean + o, load<f32>(mean + o) + load<f32>(r + o));
    }
  }
  for (let n = 0; n < N; n++) {
    store<f32>(mean + (<usize> n << 2), load<f32>(mean + (<usize> n << 2)) / fD);
  }
  for (let d = 0; d < D; d++) {
    const r = x + <usize> d * rowBytes;
    let n = 0;
    for (; n < N4; n += 4) {
      const o = <usize> n << 2;
      const c = f32x4.sub(v128.load(r + o), v128.load(mean + o));
      v128.store(inv + o, f32x4.add(v128.load(inv + o), f32x4.mul(c, c)));
    }
    for (; n < N; n++) {
      const o = <usize> n << 2;
      const c = load<f32>(r + o) - load<f32>(mean + o);
      store<f32>(inv + o, load<f32>(inv + o) + c * c);
    }
  }
  for (let n = 0; n < N; n++) {
    const o = <usize> n << 2;
    store<f32>(inv + o, <f32> 1 / sqrt<f32>(load<f32>(inv + o) / fD + eps));
  }
  for (let d = 0; d < D; d++) {
    const r = x + <usize> d * rowBytes, y = out + <usize> d * rowBytes;
    const wd = load<f32>(w + (<usize> d << 2)), bd = load<f32>(b + (<usize> d << 2));
    const w4 = f32x4.splat(wd), b4 = f32x4.splat(bd);
    let n = 0;
    for (; n < N4; n += 4) {
      const o = <usize> n << 2;
      const c = f32x4.mul(f32x4.sub(v128.load(r + o), v128.load(mean + o)), v128.load(inv + o));
      v128.store(y + o, f32x4.add(f32x4.mul(c, w4), b4));
    }
    for (; n < N; n++) {
      const o = <usize> n << 2;
      const c = (load<f32>(r + o) - load<f32>(mean + o)) * load<f32>(inv + o);
      store<f32>(y + o, c * wd + bd);
    }
  }
}

/**
 * In place on y `[D, N]` (a fresh matMul output): y[d, n] += b[d], then max(y, 0) when relu is 1.
 * Same float32 results as tfjs add and relu (relu keeps NaN).
 */
export function biasActT(y: usize, D: i32, N: i32, b: usize, relu: i32): void {
  const rowBytes = <usize> N << 2;
  const N4 = N & ~3;
  const zero = f32x4.splat(0);
  for (let d = 0; d < D; d++) {
    const r = y + <usize> d * rowBytes;
    const bd = load<f32>(b + (<usize> d << 2));
    const b4 = f32x4.splat(bd);
    let n = 0;
    if (relu) {
      for (; n < N4; n += 4) {
        const o = <usize> n << 2;
        const x = f32x4.add(v128.load(r + o), b4);
        // NaN stays NaN: select x where !(x < 0)
        v128.store(r + o, v128.bitselect(zero, x, f32x4.lt(x, zero)));
      }
      for (; n < N; n++) {
        const o = <usize> n << 2;
        const x = load<f32>(r + o) + bd;
        store<f32>(r + o, x < 0 ? 0 : x);
      }
    } else {
      for (; n < N4; n += 4) {
        const o = <usize> n << 2;
        v128.store(r + o, f32x4.add(v128.load(r + o), b4));
      }
      for (; n < N; n++) {
        const o = <usize> n << 2;
        store<f32>(r + o, load<f32>(r + o) + bd);
      }
    }
  }
}
