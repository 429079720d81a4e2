/**
 * The native matMul (src/tensor/blas.ts): TensorFlow.js' WASM `matMul` routed to the system's
 * OpenBLAS through FFI, on the WASM heap. Checked against a float64 reference for every
 * transpose and batch-broadcast case, for determinism, and for its errors. Skips, saying why,
 * where OpenBLAS is not installed (`apt-get install libopenblas0`; `.ci/run` installs it).
 */
import { strict as assert } from "node:assert";
import * as tf from "@tensorflow/tfjs-core";
import { initBackend } from "../src/tensor/backend.ts";
import { nativeMatMul } from "../src/tensor/blas.ts";
import { denoEval, ROOT } from "./fixtures.ts";

await initBackend("wasm");
const native = nativeMatMul();
const skip = !native?.enabled;
if (skip) console.log(`skipping native matMul tests: ${native?.description}`);

/** Deterministic pseudo-random values in [-1, 1). */
function values(n: number, seed: number): Float32Array {
  let x = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    return x / 2 ** 31 - 1;
  });
}

/** op(A) · op(B) in float64 for [batch, rows, cols] arrays (batch 1 broadcast). */
function reference(
  a: Float32Array,
  aShape: number[],
  b: Float32Array,
  bShape: number[],
  ta: boolean,
  tb: boolean,
): Float64Array {
  const [ba, ra, ca] = aShape, [bb, rb, cb] = bShape;
  const M = ta ? ca : ra, K = ta ? ra : ca, N = tb ? rb : cb;
  const batch = Math.max(ba, bb);
  const out = new Float64Array(batch * M * N);
  for (let i = 0; i < batch; i++) {
    const ao = ba === 1 ? 0 : i * ra * ca, bo = bb === 1 ? 0 : i * rb * cb;
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) {
          const av = ta ? a[ao + k * ca + m] : a[ao + m * ca + k];
          const bv = tb ? b[bo + n * cb + k] : b[bo + k * cb + n];
          s += av * bv;
        }
        out[(i * M + m) * N + n] = s;
      }
    }
  }
  return out;
}

Deno.test({
  name: "matMul on OpenBLAS equals a float64 reference for every transpose and broadcast",
  ignore: skip,
  fn() {
    const cases: [number[], number[], boolean, boolean][] = [
      [[1, 37, 53], [1, 53, 29], false, false],
      [[1, 53, 37], [1, 53, 29], true, false],
      [[1, 37, 53], [1, 29, 53], false, true],
      [[1, 53, 37], [1, 29, 53], true, true],
      [[3, 17, 40], [3, 40, 9], false, false], // batched
      [[3, 17, 40], [1, 40, 9], false, false], // b broadcast
      [[1, 40, 17], [4, 9, 40], true, true], // a broadcast
      [[1, 300, 256], [1, 256, 130], false, false], // large enough for OpenBLAS' threads
    ];
    for (const [aShape, bShape, ta, tb] of cases) {
      const a = values(aShape.reduce((x, y) => x * y), 1),
        b = values(bShape.reduce((x, y) => x * y), 2);
      const got = tf.tidy(() =>
        tf.matMul(
          tf.tensor3d(a, aShape as [number, number, number]),
          tf.tensor3d(b, bShape as [number, number, number]),
          ta,
          tb,
        )
          .dataSync()
      );
      const want = reference(a, aShape, b, bShape, ta, tb);
      assert.equal(got.length, want.length, `${aShape} ${bShape}`);
      const K = ta ? aShape[1] : aShape[2];
      for (let i = 0; i < want.length; i++) {
        assert.ok(
          Math.abs(got[i] - want[i]) <= 1e-6 * K,
          `${aShape}x${bShape} ta=${ta} tb=${tb} [${i}]: ${got[i]} vs ${want[i]}`,
        );
      }
    }
  },
});

Deno.test({
  name: "matMul on OpenBLAS: 2-D shapes, an empty inner dimension, and the same bits every call",
  ignore: skip,
  fn() {
    const w = tf.tensor2d(values(512 * 256, 3), [512, 256]);
    const x = tf.tensor2d(values(256 * 96, 4), [256, 96]);
    const first = tf.matMul(w, x).dataSync().slice();
    for (let i = 0; i < 3; i++) assert.deepEqual(tf.matMul(w, x).dataSync(), first);
    assert.deepEqual(tf.matMul(w, x).shape, [512, 96]);
    const empty = tf.matMul(tf.zeros([4, 0]), tf.zeros([0, 3]));
    assert.deepEqual([...empty.dataSync()], new Array(12).fill(0));
    // every batch entry, not only the first, on a heap block that held other values before
    tf.matMul(tf.ones([2, 4, 3]), tf.ones([2, 3, 5])).dispose();
    const emptyBatched = tf.matMul(tf.zeros([2, 4, 0]), tf.zeros([2, 0, 5]));
    assert.deepEqual([...emptyBatched.dataSync()], new Array(40).fill(0));
    assert.throws(() => tf.matMul(tf.zeros([2, 3]), tf.zeros([4, 2])), /inner|match/i);
    tf.dispose([w, x, empty, emptyBatched]);
  },
});

/** Starts the WASM backend in a fresh process with `DPZO_BLAS` set; prints its backend line. */
function startWith(dpzoBlas: string) {
  const code = `import { describeBackend, initBackend } from "${ROOT}/src/tensor/backend.ts";
await initBackend("wasm");
console.log(describeBackend());`;
  return denoEval(code, { DPZO_BLAS: dpzoBlas });
}

Deno.test("DPZO_BLAS names a library that does not load: one line naming the fix", async () => {
  const out = await startWith("/nonexistent/libnothing.so");
  assert.notEqual(out.code, 0);
  assert.match(
    out.stderr,
    /DPZO_BLAS=\/nonexistent\/libnothing\.so: cannot load it .*DPZO_BLAS=off/,
  );
});

Deno.test("DPZO_BLAS=off keeps the WASM matMul and says so", async () => {
  const out = await startWith("off");
  assert.equal(out.code, 0, out.stderr);
  assert.match(out.stdout, /matMul: off \(DPZO_BLAS=off\)/);
});
