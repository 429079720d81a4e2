/**
 * The fused LM head (src/tensor/head.ts): log softmax(W x)[t] made block by block of the
 * vocabulary into the threads' lanes, never as a `[V, P]` tensor. Checked against float64 for
 * widths from 1 to HEAD_WIDTH and vocabularies that do not divide into blocks, for NaN
 * handling and for its errors. Needs the native matMul; skips, saying why, without OpenBLAS.
 */
import { strict as assert } from "node:assert";
import * as tf from "@tensorflow/tfjs-core";
import { initBackend } from "../src/tensor/backend.ts";
import { nativeMatMul } from "../src/tensor/blas.ts";
import { HEAD_WIDTH, headLogProbs } from "../src/tensor/head.ts";
import { blockRows } from "../src/tensor/lane.ts";

await initBackend("wasm");
const skip = !nativeMatMul()?.enabled;
if (skip) console.log(`skipping fused head tests: native matMul ${nativeMatMul()?.description}`);

/** Deterministic pseudo-random values in [-scale, scale). */
function values(n: number, seed: number, scale = 1): Float32Array {
  let x = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    return (x / 2 ** 31 - 1) * scale;
  });
}

/** log softmax(W x_col)[token] in float64. */
function reference(
  w: Float32Array,
  x: Float32Array,
  V: number,
  E: number,
  P: number,
  col: number,
  token: number,
): number {
  const logits = new Float64Array(V);
  for (let v = 0; v < V; v++) {
    let s = 0;
    for (let e = 0; e < E; e++) s += w[v * E + e] * x[e * P + col];
    logits[v] = s;
  }
  const m = Math.max(...logits);
  let sum = 0;
  for (const l of logits) sum += Math.exp(l - m);
  return logits[token] - (m + Math.log(sum));
}

function run(
  w: Float32Array,
  x: Float32Array,
  V: number,
  E: number,
  P: number,
  col: Int32Array,
  tok: Int32Array,
) {
  const X = tf.tensor2d(x, [E, P]);
  try {
    assert.equal(w.length, V * E);
    return headLogProbs(w, X, col, tok)!;
  } finally {
    X.dispose();
  }
}

Deno.test({
  name: "headLogProbs matches float64 log softmax for widths 1..HEAD_WIDTH, any vocabulary",
  ignore: skip,
  fn() {
    for (
      const [V, E, P] of [[1000, 24, 1], [20011, 16, 17], [2500, 32, 300], [700, 8, HEAD_WIDTH]]
    ) {
      assert.ok(V % blockRows(P) !== 0 || V < blockRows(P), "the last block is partial");
      const w = values(V * E, V, 2), x = values(E * P, P, 2);
      // Every column, tokens spread over the vocabulary, the first and last token included.
      const col = Int32Array.from({ length: P + 2 }, (_, i) => i % P);
      const tok = Int32Array.from({ length: P + 2 }, (_, i) => (i * 7919) % V);
      tok[0] = 0;
      tok[1] = V - 1;
      const got = run(w, x, V, E, P, col, tok);
      for (let i = 0; i < col.length; i++) {
        const want = reference(w, x, V, E, P, col[i], tok[i]);
        assert.ok(
          Math.abs(got[i] - want) <= 2e-5 * Math.max(1, Math.abs(want)),
          `V=${V} P=${P} pair ${i}: ${got[i]} vs ${want}`,
        );
        assert.ok(got[i] <= 0);
      }
    }
  },
});

Deno.test({
  name: "headLogProbs: a NaN feature poisons only its column; repeated calls give the same bits",
  ignore: skip,
  fn() {
    const V = 2000, E = 8, P = 5;
    const w = values(V * E, 3), x = values(E * P, 4);
    x[2 * P + 3] = NaN; // column 3
    const col = Int32Array.from([0, 1, 2, 3, 4, 3]);
    const tok = Int32Array.from([5, 1999, 0, 7, 1234, 1500]);
    const a = run(w, x, V, E, P, col, tok);
    assert.ok(Number.isNaN(a[3]) && Number.isNaN(a[5]));
    for (const i of [0, 1, 2, 4]) assert.ok(Number.isFinite(a[i]), `pair ${i}: ${a[i]}`);
    assert.deepEqual(run(w, x, V, E, P, col, tok), a);
  },
});

Deno.test({
  name: "headLogProbs rejects columns, tokens and widths out of range",
  ignore: skip,
  fn() {
    const V = 100, E = 4;
    assert.throws(
      () => run(values(V * E, 1), values(E * 2, 2), V, E, 2, Int32Array.of(2), Int32Array.of(0)),
      /column 2 not in \[0, 2\)/,
    );
    assert.throws(
      () => run(values(V * E, 1), values(E * 2, 2), V, E, 2, Int32Array.of(0), Int32Array.of(V)),
      /token 100 not in \[0, 100\)/,
    );
    const P = HEAD_WIDTH + 1;
    assert.throws(
      () => run(values(V * E, 1), values(E * P, 2), V, E, P, Int32Array.of(0), Int32Array.of(0)),
      /headLogProbs/,
    );
  },
});

Deno.test({
  name: "headLogProbs: a vocabulary block whose logits are all -Infinity adds nothing",
  ignore: skip,
  fn() {
    // Column 1's logits overflow to -Infinity in the first block (rows 0..blockRows(P) - 1)
    // and are finite after it: exp(-inf) = 0, so the column is a softmax over the rest.
    const P = 3, E = 2, rows = blockRows(P), V = rows + 3000;
    const w = new Float32Array(V * E), x = Float32Array.from([0.5, -3e38, 0.25, 1, 1, 1]);
    for (let v = 0; v < V; v++) {
      w[v * E] = v < rows ? 10 : 0;
      w[v * E + 1] = Math.sin(v);
    }
    const col = Int32Array.from([1, 1, 0]), tok = Int32Array.from([rows + 5, V - 1, 7]);
    const got = run(w, x, V, E, P, col, tok);
    for (let i = 0; i < col.length; i++) {
      const want = reference(w, x, V, E, P, col[i], tok[i]);
      assert.ok(Math.abs(got[i] - want) <= 1e-4, `pair ${i}: ${got[i]} vs ${want}`);
    }
  },
});
