/**
 * Benchmark of the perturbation pass: parameters/second of `perturb` over 16M float32
 * parameters (about small-OPT size), split into OPT-like tensors, plus z generation alone.
 * Run: deno run -A bench/perturb_bench.ts [millions of parameters, default 16]
 */
import { type NamedTensor, perturb } from "../src/dpzo/perturbation.ts";
import { fillZ } from "../src/rng/mod.ts";

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
time("perturb (theta += c z)", () => perturb(tensors, seed++, 1e-3));
time("perturb with weight decay", () =>
  perturb(tensors, seed++, -1e-3, {
    weightDecay: { lr: 1e-4, decay: 0.1, appliesTo: () => true },
  }));
const scratch = new Float32Array(4096);
time("fillZ alone (4096-chunks)", () => {
  for (let s = 0; s < total; s += 4096) fillZ(scratch, seed, "x", s);
});
