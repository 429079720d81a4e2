// Column log-sum-exp of an LM-head logits block, in place on the TensorFlow.js WASM heap.
//
// AssemblyScript, compiled by ./build.ts with --importMemory: the module has no memory of its
// own and no data segments; it is instantiated on the memory of @tensorflow/tfjs-backend-wasm
// and reads a `[V, P]` row-major float32 logits tensor where the matMul wrote it (no copy, no
// transpose). Scratch buffers are tensors the caller allocated on the same heap.
//
// For each column p: m[p] = max_v L[v, p];  s[p] = sum_v exp(L[v, p] - m[p])  (float64 total of
// float32 partial sums over blocks of rows). The caller forms lse[p] = m[p] + log(s[p]).

// Cephes expf, f32x4: x = n ln2 + r, |r| <= ln2 / 2, degree-6 polynomial, 2^n by exponent bits.
// Inputs here are <= 0 (logit minus its column maximum); they are clamped at -87.33 so 2^n
// stays normal. NaN propagates (f32x4.max with a NaN operand is NaN).
// @ts-ignore: decorator

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

// @ts-ignore: decorator

function exp1(x: f32): f32 {
  return f32x4.extract_lane(exp4(f32x4.splat(x)), 0);
}

/** m[p] = max over rows of L[v, p] (NaN if any is NaN). L: V x P floats, m: P floats. */
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
