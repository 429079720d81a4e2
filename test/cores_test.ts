/**
 * The helper threads (src/cores): the matMuls, the perturbation pass, the fused LM head and
 * attention give the same bits on one thread as on several, whatever OpenBLAS' own thread
 * setting (each run in its own process, since the thread counts are fixed when a process
 * starts), and DPZO_THREADS is validated.
 */
import { strict as assert } from "node:assert";
import { denoEval, ROOT } from "./fixtures.ts";

/** Runs all three on fixed inputs and prints the SHA-256 of each result, and the backend line. */
const PROBE = `
import * as tf from "@tensorflow/tfjs-core";
import { describeBackend, initBackend } from "${ROOT}/src/tensor/backend.ts";
import { perturb } from "${ROOT}/src/dpzo/perturbation.ts";
import { headLogProbs } from "${ROOT}/src/tensor/head.ts";
import { fusedAttention } from "${ROOT}/src/tensor/fused.ts";
await initBackend("wasm");
const values = (n, seed) => {
  let x = seed >>> 0;
  return Float32Array.from({ length: n }, () => (x = (Math.imul(x, 1664525) + 1013904223) >>> 0) / 2 ** 31 - 1);
};
const digest = async (a) =>
  Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", a.buffer.slice(a.byteOffset, a.byteOffset + a.byteLength))), (b) => b.toString(16).padStart(2, "0")).join("");
const tensors = [200_003, 70_001, 1000, 3 * 65536 + 5].map((n, i) => ({ name: "w" + i, data: values(n, i + 1) }));
perturb(tensors, 123456789n, 1e-3);
perturb(tensors, 987654321n, -2e-3, { weightDecay: { lr: 1e-2, decay: 0.1, appliesTo: (n) => n !== "w1" } });
const all = new Float32Array(tensors.reduce((n, t) => n + t.data.length, 0));
tensors.reduce((o, t) => (all.set(t.data, o), o + t.data.length), 0);
console.log("perturb", await digest(all));
// Products of several blocks of rows, plain and transposed, batched with a broadcast.
const w = tf.tensor2d(values(1000 * 300, 14), [1000, 300]), x = tf.tensor2d(values(300 * 77, 15), [300, 77]);
console.log("matmul", await digest(tf.matMul(w, x).dataSync()));
const wt = tf.tensor3d(values(2 * 300 * 700, 16), [2, 300, 700]);
console.log("matmul-batched", await digest(tf.matMul(wt, tf.reshape(x, [1, 300, 77]), true, false).dataSync()));
const V = 5003, E = 16, P = 300;
const lp = headLogProbs(values(V * E, 7), tf.tensor2d(values(E * P, 8), [E, P]),
  Int32Array.from({ length: P }, (_, i) => i), Int32Array.from({ length: P }, (_, i) => (i * 31) % V));
console.log("head", lp ? await digest(lp) : "no native matMul");
const B = 5, S = 37, H = 3, hd = 8, N = B * S, D = H * hd;
const mask = Int32Array.from({ length: N }, (_, n) => (n % S < (n / S | 0) * 3 ? 0 : 1));
const operands = [tf.tensor2d(values(D * N, 9), [D, N]), tf.tensor2d(values(D * N, 10), [D, N]),
  tf.tensor2d(values(D * N, 11), [D, N]), tf.tensor1d(mask, "int32")];
// The WASM kernel shares batch rows among the threads; OpenBLAS' path runs on the main thread.
const out = fusedAttention(...operands, B, S, H, hd, { scale: 0.3, native: false });
console.log("attention", await digest(out.dataSync()));
const viaBlas = fusedAttention(...operands, B, S, H, hd, { scale: 0.3 });
console.log("attention-native", await digest(viaBlas.dataSync()));
// Rows too wide for a lane go one (row, head) at a time: the other path of a helper's share.
{
  const B = 2, S = 270, H = 32, hd = 64, N = B * S, D = H * hd;
  const t = (seed) => tf.tensor2d(values(D * N, seed), [D, N]);
  const wide = fusedAttention(t(12), t(13), t(14), tf.tensor1d(new Int32Array(N).fill(1), "int32"), B, S, H, hd,
    { native: false });
  console.log("attention-wide", await digest(wide.dataSync()));
}
console.log(describeBackend());
`;

function probe(threads: string, env: Record<string, string> = {}) {
  return denoEval(PROBE, { DPZO_THREADS: threads, ...env });
}

Deno.test("matMul, perturbation, LM head and attention: the same bits on 1 and 3 threads", async () => {
  const [one, three, blas] = await Promise.all([
    probe("1"),
    probe("3"),
    probe("2", { OPENBLAS_NUM_THREADS: "3" }), // OpenBLAS' own setting: overridden, one per call
  ]);
  assert.equal(one.code, 0, one.stderr);
  assert.equal(three.code, 0, three.stderr);
  assert.equal(blas.code, 0, blas.stderr);
  const shared = "(matMuls, perturbation, attention and LM head|perturbation and attention)";
  assert.match(one.stdout, new RegExp(`${shared}: 1 thread \\(DPZO_THREADS=1\\)`));
  assert.match(three.stdout, new RegExp(`${shared}: 3 threads`));
  const results = (s: string) =>
    s.split("\n").filter((l) =>
      /^(perturb|matmul|matmul-batched|head|attention|attention-native|attention-wide) /.test(l)
    );
  assert.equal(results(one.stdout).length, 7);
  assert.deepEqual(results(three.stdout), results(one.stdout));
  assert.deepEqual(results(blas.stdout), results(one.stdout));
});

Deno.test("DPZO_THREADS out of range: one line naming the fix", async () => {
  for (const bad of ["0", "two", "1.5", "17"]) {
    const out = await probe(bad);
    assert.notEqual(out.code, 0);
    assert.match(
      out.stderr,
      new RegExp(`DPZO_THREADS=${bad.replace(".", "\\.")}: must be an integer from 1 to 16`),
    );
  }
});

Deno.test("300000 post/wait round trips with the helpers never lose a wake-up", async () => {
  // A helper that re-read its control word before sleeping could miss a post landing between
  // the two reads and sleep forever (a hang seen in training runs). Small commands back to back
  // make that window likely; the child is killed if it hangs.
  const code = `
import { Command, helpers } from "${ROOT}/src/cores/mod.ts";
const pool = helpers();
for (let i = 0; i < 300000; i++) {
  for (const h of pool) { h.args[22] = 0; h.post(Command.Perturb); } // a pass over no chunks
  for (const h of pool) h.wait();
}
console.log("helpers", pool.length);`;
  const out = await denoEval(code, { DPZO_THREADS: "3" }, 90_000);
  assert.equal(out.code, 0, `hung or failed: ${out.stderr}`);
  assert.match(out.stdout, /helpers 2/);
});

Deno.test("a helper's error reaches the caller, and the helper works again after it", async () => {
  const code = `
import { Command, helpers, waitAll } from "${ROOT}/src/cores/mod.ts";
const [helper] = helpers();
helper.post(99);
try { waitAll([helper]); console.log("no error"); } catch (e) { console.log("error:", e.message); }
helper.args[22] = 0; // a perturbation pass over no chunks
helper.post(Command.Perturb);
try { helper.post(Command.Perturb); console.log("posted twice"); } catch (e) { console.log("second post:", e.message); }
helper.wait();
console.log("idle again");`;
  const out = await denoEval(code, { DPZO_THREADS: "2" });
  const text = out.stdout;
  assert.equal(out.code, 0, out.stderr);
  assert.match(text, /error: helper thread: unknown command 99/);
  assert.match(text, /second post: helper thread: posted to while busy .*DPZO_THREADS=1/);
  assert.match(text, /idle again/);
});
