/**
 * The LM-head log-sum-exp kernel (src/tensor/head_kernel.ts) against a float64 reference.
 */
import * as tf from "@tensorflow/tfjs-core";
import { strict as assert } from "node:assert";
import { initBackend } from "../src/tensor/backend.ts";
import { columnLogSumExp } from "../src/tensor/head_kernel.ts";

await initBackend("wasm");

function reference(data: Float32Array, V: number, P: number): Float64Array {
  const out = new Float64Array(P);
  for (let p = 0; p < P; p++) {
    let m = -Infinity;
    for (let v = 0; v < V; v++) m = Math.max(m, data[v * P + p]);
    let s = 0;
    for (let v = 0; v < V; v++) s += Math.exp(data[v * P + p] - m);
    out[p] = m + Math.log(s);
  }
  return out;
}

function assertAlmostEquals(got: number, want: number, tol: number) {
  assert.ok(Math.abs(got - want) <= tol, `${got} vs ${want} (tolerance ${tol})`);
}

Deno.test("columnLogSumExp matches float64 along axis 0, any width, large offsets", () => {
  for (const [V, P] of [[50272, 64], [1000, 7], [3, 1], [513, 13]]) {
    const data = new Float32Array(V * P);
    for (let i = 0; i < data.length; i++) {
      const p = i % P;
      // columns with very different scales and offsets (a shift is needed for exp)
      data[i] = (Math.random() - 0.5) * (1 + p) * 4 + (p % 3 === 0 ? 300 : p % 3 === 1 ? -300 : 0);
    }
    const t = tf.tensor2d(data, [V, P]);
    const got = columnLogSumExp(t);
    t.dispose();
    const want = reference(data, V, P);
    for (let p = 0; p < P; p++) {
      assertAlmostEquals(got[p], want[p], 1e-5 * Math.max(1, Math.abs(want[p])));
    }
  }
});

Deno.test("columnLogSumExp: a NaN poisons only its column; -Infinity entries count as 0", () => {
  const V = 100, P = 6;
  const data = new Float32Array(V * P).map(() => Math.random());
  data[17 * P + 2] = NaN;
  for (let v = 0; v < V; v += 2) data[v * P + 4] = -Infinity;
  const t = tf.tensor2d(data, [V, P]);
  const got = columnLogSumExp(t);
  t.dispose();
  const want = reference(data, V, P);
  assert.ok(Number.isNaN(got[2]));
  for (const p of [0, 1, 3, 4, 5]) assertAlmostEquals(got[p], want[p], 1e-5);
});
