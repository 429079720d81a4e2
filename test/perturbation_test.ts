/**
 * Tests of the in-place perturbation pass: exact float32 semantics against a per-element
 * reference, +c then -c restoring within float32 rounding, bit-identical replay, MeZO weight
 * decay (not on biases and layer norms), and input validation.
 */
import { strict as assert } from "node:assert";
import { CHUNK, mezoDecayApplies, perturb } from "../src/dpzo/perturbation.ts";
import { fillZ } from "../src/rng/mod.ts";

function tensor(name: string, n: number, salt: number) {
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = Math.sin(i * 0.37 + salt) * 0.05;
  return { name, data };
}

function model() {
  return [
    tensor("model.decoder.embed_tokens.weight", 3 * CHUNK + 13, 1),
    tensor("model.decoder.layers.0.self_attn.q_proj.weight", 4097, 2),
    tensor("model.decoder.layers.0.self_attn.q_proj.bias", 7, 3),
    tensor("model.decoder.layers.0.self_attn_layer_norm.weight", 64, 4),
    tensor("model.decoder.final_layer_norm.bias", 64, 5),
    tensor("x", 1, 6),
  ];
}

const SEED = 0x0123456789abcdefn;

Deno.test("perturb computes float32(theta + float32(c * z)) element by element", () => {
  const ts = model();
  const before = ts.map((t) => t.data.slice());
  const coeff = 1e-3 / 3; // not a float32: rounded once
  perturb(ts, SEED, coeff);
  const c = Math.fround(coeff);
  ts.forEach((t, k) => {
    const z = new Float32Array(t.data.length);
    fillZ(z, SEED, t.name, 0);
    const want = new Float32Array(t.data.length);
    for (let i = 0; i < z.length; i++) want[i] = before[k][i] + Math.fround(c * z[i]);
    assert.deepEqual(t.data, want, t.name);
    assert.notDeepEqual(t.data, before[k]);
  });
});

Deno.test("+c then -c restores the weights within float32 rounding", () => {
  const ts = model();
  const before = ts.map((t) => t.data.slice());
  const phi = 1e-3;
  perturb(ts, SEED, phi);
  perturb(ts, SEED, -phi);
  ts.forEach((t, k) => {
    for (let i = 0; i < t.data.length; i++) {
      const err = Math.abs(t.data[i] - before[k][i]);
      // Two roundings of values of magnitude <= |theta| + |phi z| (|z| < 6.7).
      const bound = 2 * 2 ** -24 * (Math.abs(before[k][i]) + phi * 6.7) * 2;
      assert.ok(err <= bound, `${t.name}[${i}] err ${err} > ${bound}`);
    }
  });
});

Deno.test("a step's three passes replay bit-identically; split order does not matter", () => {
  const phi = 1e-3, lr = 1e-4, ghat = 0.37;
  const wd = { lr, decay: 0.1, appliesTo: mezoDecayApplies };
  const run = (split: boolean) => {
    const ts = model();
    const passes: [number, boolean][] = [[phi, false], [-2 * phi, false], [phi - lr * ghat, true]];
    for (const [c, decay] of passes) {
      const opts = decay ? { weightDecay: wd } : {};
      if (split) {
        // Two stages holding disjoint tensors perturb independently.
        perturb(ts.slice(0, 3), SEED, c, opts);
        perturb(ts.slice(3), SEED, c, opts);
      } else {
        perturb(ts, SEED, c, opts);
      }
    }
    return ts;
  };
  const a = run(false), b = run(true);
  a.forEach((t, k) => assert.deepEqual(t.data, b[k].data));
});

Deno.test("weight decay shrinks weights only, not biases and layer norms", () => {
  assert.equal(mezoDecayApplies("model.decoder.layers.0.fc1.weight"), true);
  assert.equal(mezoDecayApplies("model.decoder.embed_tokens.weight"), true);
  assert.equal(mezoDecayApplies("model.decoder.layers.0.fc1.bias"), false);
  assert.equal(mezoDecayApplies("model.decoder.layers.0.self_attn_layer_norm.weight"), false);
  assert.equal(mezoDecayApplies("model.decoder.final_layer_norm.bias"), false);
  assert.equal(mezoDecayApplies("transformer.ln_f.LayerNorm.weight"), false);

  const ts = model();
  const before = ts.map((t) => t.data.slice());
  const lr = 0.01, decay = 0.5, coeff = 2e-3;
  perturb(ts, SEED, coeff, { weightDecay: { lr, decay, appliesTo: mezoDecayApplies } });
  const keep = Math.fround(1 - lr * decay), c = Math.fround(coeff);
  ts.forEach((t, k) => {
    const z = new Float32Array(t.data.length);
    fillZ(z, SEED, t.name, 0);
    const decayed = mezoDecayApplies(t.name);
    for (let i = 0; i < z.length; i++) {
      const th = before[k][i];
      const want = decayed
        ? Math.fround(Math.fround(keep * th) + Math.fround(c * z[i]))
        : Math.fround(th + Math.fround(c * z[i]));
      assert.equal(t.data[i], want, `${t.name}[${i}]`);
    }
  });
});

Deno.test("perturb rejects bad input", () => {
  const ts = model();
  assert.throws(() => perturb(ts, SEED, NaN), RangeError);
  assert.throws(() => perturb(ts, -1n, 1e-3), RangeError);
  assert.throws(
    () => perturb(ts, SEED, 1e-3, { weightDecay: { lr: 1, decay: -1, appliesTo: () => true } }),
    RangeError,
  );
  assert.throws(() => perturb([ts[0], ts[0]], SEED, 1e-3), /listed twice/);
});
