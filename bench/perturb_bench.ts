/**
 * Benchmark of the perturbation pass: parameters/second of `perturb` over 16M float32
 * parameters (about small-OPT size), split into OPT-like tensors, on the WASM SIMD kernel and on
 * the JS reference path, plus z generation alone and a "WASM z + JS update loop" variant (the
 * design alternative to copying theta into the kernel).
 * Run: deno run -A bench/perturb_bench.ts [millions of parameters, default 16]
 */
import { type NamedTensor, perturb, perturbKernel } from "../src/dpzo/perturbation.ts";
import { fillZ, nameHash, philoxRoundKeys, seedKey } from "../src/rng/mod.ts";

const total = Math.round(Number(Deno.args[0] ?? "16") * 1024 * 1024);
const tensorSize = 1024 * 1024;
const tensors: NamedTensor[] = [];
for (let i = 0, left = total; left > 0; i++, left -= tensorSize) {
  const data = new Float32Array(Math.min(tensorSize, left));
  for (let j = 0; j < data.length; j++) data[j] = ((j * 2654435761) % 1000) * 1e-5;
  tensors.push({ name: `model.decoder.layers.${i}.fc1.weight`, data });
}

function time(label: string, fn: () => void, reps = 3): void {
  fn(); // warm-up (JIT)
  let best = Infinity;
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    fn();
    best = Math.min(best, (performance.now() - t0) / 1000);
  }
  console.log(
    `${label}: ${(total / best / 1e6).toFixed(1)} M parameters/s (${
      (best * 1000).toFixed(0)
    } ms per pass over ${(total / 2 ** 20).toFixed(0)}M)`,
  );
}

let seed = 1n;
for (const impl of ["wasm", "js"] as const) {
  time(`perturb ${impl} (theta += c z)`, () => perturb(tensors, seed++, 1e-3, { impl }));
  time(`perturb ${impl} with weight decay`, () =>
    perturb(tensors, seed++, -1e-3, {
      impl,
      weightDecay: { lr: 1e-4, decay: 0.1, appliesTo: () => true },
    }));
}

const kernel = perturbKernel();
if (kernel !== null) {
  // The alternative design: z generated in kernel memory, the update in a JS loop.
  time("wasm z + JS update loop", () => {
    const keys = philoxRoundKeys(...seedKey(seed++));
    const c = Math.fround(1e-3);
    for (const { name, data } of tensors) {
      kernel.setKey(keys, ...nameHash(name));
      for (let s = 0; s < data.length; s += 16384) {
        const z = kernel.generate(s, Math.min(16384, data.length - s));
        for (let j = 0; j < z.length; j++) data[s + j] = data[s + j] + Math.fround(c * z[j]);
      }
    }
  });
  time("wasm z alone (16384-chunks)", () => {
    kernel.setKey(philoxRoundKeys(...seedKey(seed)), ...nameHash("x"));
    for (let s = 0; s < total; s += 16384) kernel.generate(s, 16384);
  });
}
const scratch = new Float32Array(4096);
time("js fillZ alone (4096-chunks)", () => {
  for (let s = 0; s < total; s += 4096) fillZ(scratch, seed, "x", s);
});
