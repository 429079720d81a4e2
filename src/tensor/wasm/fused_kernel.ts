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
// stays normal. NaN propagates (f32x4.max with a NaN operand is NaN).

function exp4(x: v128): v128 {
  x = f32x4.max(x, f32x4.splat(-87.33654));
  const n = f32x4.nearest(f32x4.mul(x, f32x4.splat(1.44269504088896341)));
  let r = f32x4.sub(x, f32x4.mul(n, f32x4.splat(0.693359375)));
  r = f32x4.sub(r, f32x4.mul(n, f32x4.splat(-2.12194440e-4)));
  const z = f32x4.mul(r, r);
  let y = f32x4.splat(1.9875691500e-4);
  y = f32x4.add(f32x4.mul(y, r), f32x4.splat(1.3981999507e-3));
  y = f32x4.add(f32x4.mul(y, r), f32x4.splat(8.3334519073e-3));
  y = f32x4.add(f32x4.mul(y, r), f32x4.splat(4.1665795894e-2));
  y = f32x4.add(f32x4.mul(y, r), f32x4.splat(1.6666665459e-1));
  y = f32x4.add(f32x4.mul(y, r), f32x4.splat(5.0000001201e-1));
  y = f32x4.add(f32x4.add(f32x4.mul(y, z), r), f32x4.splat(1.0));
  const e = i32x4.shl(i32x4.add(i32x4.trunc_sat_f32x4_s(n), i32x4.splat(127)), 23);
  return f32x4.mul(y, e);
}

function exp1(x: f32): f32 {
  return f32x4.extract_lane(exp4(f32x4.splat(x)), 0);
}

/**
 * LM head, pass 1: m[p] = max over rows of L[v, p] (NaN if any is NaN), L `[V, P]` row-major
 * logits as the matMul wrote them, m: P floats. Pass 2 (colSumExp) gives s[p] = sum_v
 * exp(L[v, p] - m[p]); the caller forms lse[p] = m[p] + log(s[p]).
 */
export function colMax(L: usize, V: i32, P: i32, m: usize): void {
  const P4 = P & ~3;
  const stride = <usize> P << 2;
  memory.copy(m, L, stride);
  let row = L + stride;
  for (let v = 1; v < V; v++) {
    let p = 0;
    for (; p < P4; p += 4) {
      const o = <usize> p << 2;
      v128.store(m + o, f32x4.max(v128.load(m + o), v128.load(row + o)));
    }
    for (; p < P; p++) {
      const o = <usize> p << 2;
      const a = load<f32>(m + o), b = load<f32>(row + o);
      store<f32>(m + o, a != a || b != b ? NaN : max(a, b));
    }
    row += stride;
  }
}

const BLOCK = 128;

/**
 * s[p] = sum over rows of exp(L[v, p] - m[p]) as float64 (s: P doubles, 8-byte aligned), with
 * float32 partial sums over blocks of BLOCK rows kept in acc (P floats).
 */
export function colSumExp(L: usize, V: i32, P: i32, m: usize, acc: usize, s: usize): void {
  const P4 = P & ~3;
  const stride = <usize> P << 2;
  memory.fill(s, 0, <usize> P << 3);
  let row = L;
  for (let v0 = 0; v0 < V; v0 += BLOCK) {
    const v1 = min(V, v0 + BLOCK);
    memory.fill(acc, 0, stride);
    for (let v = v0; v < v1; v++) {
      let p = 0;
      for (; p < P4; p += 4) {
        const o = <usize> p << 2;
        const x = f32x4.sub(v128.load(row + o), v128.load(m + o));
        v128.store(acc + o, f32x4.add(v128.load(acc + o), exp4(x)));
      }
      for (; p < P; p++) {
        const o = <usize> p << 2;
        store<f32>(acc + o, load<f32>(acc + o) + exp1(load<f32>(row + o) - load<f32>(m + o)));
      }
      row += stride;
    }
    for (let p = 0; p < P; p++) {
      store<f64>(
        s + (<usize> p << 3),
        load<f64>(s + (<usize> p << 3)) + <f64> load<f32>(acc + (<usize> p << 2)),
      );
    }
  }
}

const F32_MIN: f32 = -3.4028234663852886e38;

/**
 * Causal self-attention of one layer in the transposed layout, for every (row b, head h):
 * q, k, v, out are `[D, N]` float32 (D = H * hd hidden rows, N = B * S tokens, token b * S + s),
 * q already scaled by hd^-0.5; keyMask is N int32 (1 = real token). As Hugging Face OPT:
 * x[i, j] = max(q_i . k_j + (j <= i && mask_j ? 0 : float32 min), float32 min),
 * p = softmax_j(x[i, :]) (a fully masked row is uniform over its S keys, as there),
 * out[:, i] = sum_j p[i, j] v[:, j]. scratch: S * S + 3 * hd * S floats. A head's q, k, v
 * blocks are first packed contiguously ([hd, S] each): read in place their rows are N floats
 * apart, and rows 4 KiB apart alias in L1.
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
): void {
  const N = B * S;
  const rowBytes = <usize> N << 2;
  const S4 = S & ~3;
  const S16 = S & ~15;
  const sRow = <usize> S << 2;
  for (let b = 0; b < B; b++) {
    const c0 = <usize> (b * S) << 2; // byte offset of this row's first token in a [., N] row
    const mrow = keyMask + c0;
    for (let h = 0; h < H; h++) {
      const d0 = <usize> (h * hd) * rowBytes; // byte offset of this head's first hidden row
      const oh = out + d0 + c0;
      const qh = scratch + <usize> S * sRow,
        kh = qh + <usize> hd * sRow,
        vh = kh + <usize> hd * sRow;
      for (let d = 0; d < hd; d++) {
        const r = <usize> d * rowBytes + d0 + c0, w = <usize> d * sRow;
        memory.copy(qh + w, q + r, sRow);
        memory.copy(kh + w, k + r, sRow);
        memory.copy(vh + w, v + r, sRow);
      }
      // scores[i, j] = sum_d q[d, i] k[d, j]
      for (let i = 0; i < S; i++) {
        const srow = scratch + <usize> i * sRow;
        const qi = qh + (<usize> i << 2);
        let j = 0;
        for (; j < S16; j += 16) {
          const o = <usize> j << 2;
          let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
          for (let d = 0; d < hd; d++) {
            const r = <usize> d * sRow;
            const x = f32x4.splat(load<f32>(qi + r));
            const kr = kh + r + o;
            a0 = f32x4.add(a0, f32x4.mul(x, v128.load(kr)));
            a1 = f32x4.add(a1, f32x4.mul(x, v128.load(kr, 16)));
            a2 = f32x4.add(a2, f32x4.mul(x, v128.load(kr, 32)));
            a3 = f32x4.add(a3, f32x4.mul(x, v128.load(kr, 48)));
          }
          v128.store(srow + o, a0);
          v128.store(srow + o, a1, 16);
          v128.store(srow + o, a2, 32);
          v128.store(srow + o, a3, 48);
        }
        for (; j < S4; j += 4) {
          const o = <usize> j << 2;
          let a0 = f32x4.splat(0);
          for (let d = 0; d < hd; d++) {
            const r = <usize> d * sRow;
            a0 = f32x4.add(a0, f32x4.mul(f32x4.splat(load<f32>(qi + r)), v128.load(kh + r + o)));
          }
          v128.store(srow + o, a0);
        }
        for (; j < S; j++) {
          const o = <usize> j << 2;
          let a: f32 = 0;
          for (let d = 0; d < hd; d++) {
            const r = <usize> d * sRow;
            a += load<f32>(qi + r) * load<f32>(kh + r + o);
          }
          store<f32>(srow + o, a);
        }
        // mask, clamp, softmax over j (scalar: S values, exp by the SIMD routine's lane 0)
        let m: f32 = -Infinity;
        for (let jj = 0; jj < S; jj++) {
          const o = <usize> jj << 2;
          const visible = jj <= i && load<i32>(mrow + o) == 1;
          let x = load<f32>(srow + o) + (visible ? <f32> 0 : F32_MIN);
          x = x != x ? x : max(x, F32_MIN);
          store<f32>(srow + o, x);
          m = x != x || m != m ? NaN : max(m, x);
        }
        let sum: f32 = 0;
        for (let jj = 0; jj < S; jj++) {
          const o = <usize> jj << 2;
          const e = exp1(load<f32>(srow + o) - m);
          store<f32>(srow + o, e);
          sum += e;
        }
        const inv: f32 = <f32> 1 / sum;
        for (let jj = 0; jj < S; jj++) {
          const o = <usize> jj << 2;
          store<f32>(srow + o, load<f32>(srow + o) * inv);
        }
      }
      // out[d, i] = sum_j p[i, j] v[d, j]
      for (let d = 0; d < hd; d++) {
        const vr = vh + <usize> d * sRow, or = oh + <usize> d * rowBytes;
        for (let i = 0; i < S; i++) {
          const prow = scratch + <usize> i * sRow;
          let acc = f32x4.splat(0);
          let j = 0;
          for (; j < S4; j += 4) {
            const o = <usize> j << 2;
            acc = f32x4.add(acc, f32x4.mul(v128.load(prow + o), v128.load(vr + o)));
          }
          let a: f32 = f32x4.extract_lane(acc, 0) + f32x4.extract_lane(acc, 1) +
            (f32x4.extract_lane(acc, 2) + f32x4.extract_lane(acc, 3));
          for (; j < S; j++) {
            const o = <usize> j << 2;
            a += load<f32>(prow + o) * load<f32>(vr + o);
          }
          store<f32>(or + (<usize> i << 2), a);
        }
      }
    }
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
  for (let n = 0; n < N; n++) {
    const t = tok + <usize> load<i32>(ids + (<usize> n << 2)) * (<usize> E << 2);
    const p = pos + <usize> load<i32>(rows + (<usize> n << 2)) * (<usize> E << 2);
    let o = out + (<usize> n << 2);
    for (let e = 0; e < E; e++) {
      store<f32>(o, load<f32>(t + (<usize> e << 2)) + load<f32>(p + (<usize> e << 2)));
      o += rowBytes;
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
