/**
 * The WASM kernels of src/tensor/fused.ts (LM-head log-sum-exp, attention, LayerNorm,
 * embeddings) against float64 references.
 */
import * as tf from "@tensorflow/tfjs-core";
import { strict as assert } from "node:assert";
import { initBackend } from "../src/tensor/backend.ts";
import {
  addBiasInPlace,
  columnLogSumExp,
  embedTransposed,
  fusedAttention,
  gatherColumns,
  layerNormTransposed,
} from "../src/tensor/fused.ts";

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

/** Hugging Face OPT attention in float64 on the transposed layout (see fusedAttention). */
function attentionReference(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  mask: Int32Array,
  B: number,
  S: number,
  H: number,
  hd: number,
): Float64Array {
  const N = B * S, F32_MIN = -3.4028234663852886e38;
  const out = new Float64Array(H * hd * N);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < S; i++) {
        const x = new Float64Array(S);
        for (let j = 0; j < S; j++) {
          let s = 0;
          for (let d = 0; d < hd; d++) {
            s += q[(h * hd + d) * N + b * S + i] * k[(h * hd + d) * N + b * S + j];
          }
          const visible = j <= i && mask[b * S + j] === 1;
          x[j] = Math.max(Math.fround(s + (visible ? 0 : F32_MIN)), F32_MIN);
        }
        const m = Math.max(...x);
        const e = x.map((t) => Math.exp(t - m));
        const sum = e.reduce((a, t) => a + t, 0);
        for (let d = 0; d < hd; d++) {
          let acc = 0;
          for (let j = 0; j < S; j++) acc += (e[j] / sum) * v[(h * hd + d) * N + b * S + j];
          out[(h * hd + d) * N + b * S + i] = acc;
        }
      }
    }
  }
  return out;
}

Deno.test("fusedAttention matches float64 attention: padding, fully masked rows, odd lengths", () => {
  // Through OpenBLAS (when it is on) and through the WASM kernel; q · k scaled by 1 and by 1/3.
  const cases = [[3, 7, 2, 5], [2, 37, 4, 16], [1, 64, 1, 64], [2, 1, 2, 3]].flatMap((shape) =>
    [true, false].flatMap((native) => [1, 1 / 3].map((scale) => ({ shape, native, scale })))
  );
  for (const { shape: [B, S, H, hd], native, scale } of cases) {
    const N = B * S, D = H * hd;
    const rnd = () => new Float32Array(D * N).map(() => (Math.random() - 0.5) * 2);
    const q = rnd(), k = rnd(), v = rnd();
    const mask = new Int32Array(N).fill(1);
    // row 0 left-padded by 2 (its first queries see no key), row 1 right-padded by 3
    if (S > 3) {
      mask[0] = mask[1] = 0;
      if (B > 1) mask[2 * S - 1] = mask[2 * S - 2] = mask[2 * S - 3] = 0;
    }
    const [tq, tk, tv] = [q, k, v].map((a) => tf.tensor2d(a, [D, N]));
    const tm = tf.tensor1d(mask, "int32");
    const out = fusedAttention(tq, tk, tv, tm, B, S, H, hd, { scale, native })!;
    const got = out.dataSync();
    tf.dispose([tq, tk, tv, tm, out]);
    const want = attentionReference(q.map((x) => x * scale), k, v, mask, B, S, H, hd);
    for (let i = 0; i < want.length; i++) assertAlmostEquals(got[i], want[i], 1e-5);
  }
});

Deno.test("fusedAttention: a NaN key poisons the queries that see it, and only those", () => {
  const B = 2, S = 9, H = 2, hd = 4, N = B * S, D = H * hd;
  const rnd = () => tf.tensor2d(new Float32Array(D * N).map(() => Math.random() - 0.5), [D, N]);
  const [q, v] = [rnd(), rnd()];
  const kv = new Float32Array(D * N).map(() => Math.random() - 0.5);
  kv[1 * N + 3] = NaN; // head 0 (hidden row 1), batch row 0, key 3
  const k = tf.tensor2d(kv, [D, N]);
  const mask = tf.tensor1d(new Int32Array(N).fill(1), "int32");
  for (const native of [true, false]) {
    const out = fusedAttention(q, k, v, mask, B, S, H, hd, { native })!;
    const got = out.dataSync();
    out.dispose();
    for (let d = 0; d < D; d++) {
      for (let n = 0; n < N; n++) {
        const poisoned = d < hd && n < S && n >= 3; // head 0, row 0, queries i >= 3
        assert.equal(Number.isNaN(got[d * N + n]), poisoned, `native ${native}: [${d}, ${n}]`);
      }
    }
  }
  tf.dispose([q, k, v, mask]);
});

Deno.test("gatherColumns picks columns in the order asked, repeats too, and rejects bad ones", () => {
  const x = tf.tensor2d([0, 1, 2, 3, 10, 11, 12, 13], [2, 4]);
  const out = gatherColumns(x, Int32Array.from([3, 0, 0, 2]))!;
  assert.deepEqual(Array.from(out.dataSync()), [3, 0, 0, 2, 13, 10, 10, 12]);
  assert.deepEqual(out.shape, [2, 4]);
  assert.throws(() => gatherColumns(x, Int32Array.from([4])), /column 4 not in \[0, 4\)/);
  tf.dispose([x, out]);
});

Deno.test("layerNormTransposed matches float64 LayerNorm over axis 0 (odd widths too)", () => {
  for (const [D, N] of [[5, 7], [256, 1024], [3, 1]]) {
    const x = new Float32Array(D * N).map(() => Math.random() * 4 - 1);
    const w = new Float32Array(D).map(() => 1 + Math.random() * 0.2);
    const b = new Float32Array(D).map(() => Math.random() * 0.1);
    const tx = tf.tensor2d(x, [D, N]), tw = tf.tensor2d(w, [D, 1]), tb = tf.tensor2d(b, [D, 1]);
    const out = layerNormTransposed(tx, tw, tb, 1e-5)!;
    const got = out.dataSync();
    tf.dispose([tx, tw, tb, out]);
    for (let n = 0; n < N; n++) {
      let mean = 0, v = 0;
      for (let d = 0; d < D; d++) mean += x[d * N + n] / D;
      for (let d = 0; d < D; d++) v += (x[d * N + n] - mean) ** 2 / D;
      for (let d = 0; d < D; d++) {
        const want = ((x[d * N + n] - mean) / Math.sqrt(v + 1e-5)) * w[d] + b[d];
        assertAlmostEquals(got[d * N + n], want, 1e-5);
      }
    }
  }
});

Deno.test("embedTransposed writes tok[id] + pos[row] as columns and rejects bad ids", () => {
  const V = 11, R = 6, E = 5, N = 9;
  const tok = new Float32Array(V * E).map(() => Math.random());
  const pos = new Float32Array(R * E).map(() => Math.random());
  const ids = Int32Array.from({ length: N }, (_, n) => (n * 7) % V);
  const rows = Int32Array.from({ length: N }, (_, n) => n % R);
  const tt = tf.tensor2d(tok, [V, E]), tp = tf.tensor2d(pos, [R, E]);
  const out = embedTransposed(tt, tp, ids, rows)!;
  const got = out.dataSync();
  out.dispose();
  for (let n = 0; n < N; n++) {
    for (let e = 0; e < E; e++) {
      assert.equal(got[e * N + n], Math.fround(tok[ids[n] * E + e] + pos[rows[n] * E + e]));
    }
  }
  assert.throws(() => embedTransposed(tt, tp, Int32Array.of(V), Int32Array.of(0)), RangeError);
  assert.throws(() => embedTransposed(tt, tp, Int32Array.of(0), Int32Array.of(-1)), RangeError);
  tf.dispose([tt, tp]);
});

Deno.test("addBiasInPlace equals tfjs add (and relu) bit for bit, odd widths too", () => {
  for (const [D, N] of [[5, 7], [64, 1024]]) {
    for (const relu of [false, true]) {
      const x = new Float32Array(D * N).map(() => Math.random() * 2 - 1);
      const b = new Float32Array(D).map(() => Math.random() - 0.5);
      const y = tf.tensor2d(x, [D, N]), tb = tf.tensor2d(b, [D, 1]);
      const want = tf.tidy(() => relu ? tf.relu(tf.add(y, tb)) : tf.add(y, tb)).dataSync();
      assert.ok(addBiasInPlace(y, tb, relu));
      assert.deepEqual(y.dataSync(), want);
      tf.dispose([y, tb]);
    }
  }
});

Deno.test({
  name: "the WASM heap is advised for transparent huge pages (Linux)",
  ignore: Deno.build.os !== "linux",
  fn() {
    const heap = (tf.backend() as unknown as { wasm: { HEAPU8: Uint8Array } }).wasm.HEAPU8;
    const at = Deno.UnsafePointer.value(Deno.UnsafePointer.of(heap)!) as bigint;
    // The mapping holding the heap's tensors (past its first 2 MiB page) carries "hg".
    const probe = at + (4n << 20n);
    const smaps = Deno.readTextFileSync("/proc/self/smaps").split("\n");
    let inside = false, flags = "";
    for (const line of smaps) {
      const range = line.match(/^([0-9a-f]+)-([0-9a-f]+) /);
      if (range) inside = BigInt("0x" + range[1]) <= probe && probe < BigInt("0x" + range[2]);
      else if (inside && line.startsWith("VmFlags:")) flags = line;
    }
    assert.match(flags, /\bhg\b/, `heap mapping flags: ${flags || "(mapping not found)"}`);
  },
});
