/**
 * Privacy accountant timings: the paper's setting (q = 16/1000, T = 75000, delta = 1e-5) by
 * PLD (with and without the error bound) and RDP, and calibration of sigma for epsilon = 4.
 * Run: deno run bench/privacy_bench.ts
 */
import { calibrateNoise, pldEpsilon, rdpEpsilon } from "../src/privacy/mod.ts";

const groups = [{ step: { mechanism: "gaussian" as const, q: 0.016, sigma: 4.8 }, count: 75000 }];
function time<T>(label: string, f: () => T): T {
  const t = performance.now();
  const r = f();
  console.log(`${label}: ${(performance.now() - t).toFixed(0)} ms`);
  return r;
}
time("warm-up", () => pldEpsilon(groups, 1e-5));
const p = time("pld epsilon + error bound", () => pldEpsilon(groups, 1e-5));
console.log(`  epsilon ${p.epsilon} (error ${p.error})`);
time("pld epsilon, upper bound only", () => pldEpsilon(groups, 1e-5, { bounds: false }));
time("rdp epsilon", () => rdpEpsilon(groups, 1e-5));
for (const epsilon of [4, 1, 0.5]) {
  const c = time(
    `calibrate sigma (pld) for epsilon ${epsilon}`,
    () => calibrateNoise({ mechanism: "gaussian", q: 0.016, steps: 75000, epsilon, delta: 1e-5 }),
  );
  console.log(`  sigma ${c.noise}, epsilon ${c.epsilon}, ${c.evaluations} evaluations`);
}
