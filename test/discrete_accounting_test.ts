/**
 * The accountant of the discrete mechanisms (src/privacy/discrete.ts): its privacy loss against
 * direct sums over the integers (one step, two composed steps, subsampled, both neighbour
 * directions), and `dpzo privacy` for the discrete mechanism at or above the continuous
 * reference values (dp_accounting / prv_accountant in the paper's setting).
 */
import { strict as assert } from "node:assert";
import {
  calibrateNoise,
  gridUnits,
  ledgerEpsilon,
  type LedgerStepPrivacy,
  pldDelta,
} from "../src/privacy/mod.ts";
import { parsePrivacyFlags, runPrivacy } from "../cluster/cli/privacy.ts";

/** pmf of N_Z(0, s^2) or Lap_Z(s) on [-K, K]. */
function noisePmf(kind: "gaussian" | "laplace", s: number, K: number): Map<number, number> {
  const w = (x: number) =>
    kind === "gaussian" ? Math.exp(-(x * x) / (2 * s * s)) : Math.exp(-Math.abs(x) / s);
  let z = 0;
  for (let x = -K; x <= K; x++) z += w(x);
  return new Map(Array.from({ length: 2 * K + 1 }, (_, i) => [i - K, w(i - K) / z]));
}

/** delta(eps) of T composed subsampled steps, by summing over every outcome (small supports). */
function directDelta(
  kind: "gaussian" | "laplace",
  q: number,
  s: number,
  D: number,
  eps: number,
  T: 1 | 2,
): number {
  const K = Math.ceil(30 * s) + D;
  const mu = noisePmf(kind, s, K + D);
  const m0 = (x: number) => mu.get(x) ?? 0;
  const mix = (x: number) => (1 - q) * m0(x) + q * m0(x - D);
  let remove = 0, add = 0;
  const e = Math.exp(eps);
  for (let x = -K; x <= K + D; x++) {
    if (T === 1) {
      remove += Math.max(0, mix(x) - e * m0(x));
      add += Math.max(0, m0(x) - e * mix(x));
      continue;
    }
    for (let y = -K; y <= K + D; y++) {
      remove += Math.max(0, mix(x) * mix(y) - e * m0(x) * m0(y));
      add += Math.max(0, m0(x) * m0(y) - e * mix(x) * mix(y));
    }
  }
  return Math.max(remove, add);
}

Deno.test("discrete losses: delta(eps) equals the direct sum over the integers, and bounds it", () => {
  const cases: ["gaussian" | "laplace", number, number, number, number, 1 | 2][] = [
    ["gaussian", 1, 0.5, 1, 1, 1],
    ["gaussian", 1, 1.3, 3, 2, 1],
    ["gaussian", 0.3, 0.9, 2, 0.4, 1],
    ["gaussian", 0.3, 0.9, 2, 0.6, 2],
    ["laplace", 1, 1.5, 2, 0.5, 1],
    ["laplace", 0.2, 1.5, 3, 0.1, 2],
  ];
  for (const [kind, q, noise, D, eps, T] of cases) {
    const step: LedgerStepPrivacy = kind === "gaussian"
      ? { mechanism: kind, q, sigma: noise, gridUnits: D }
      : { mechanism: kind, q, b: noise, gridUnits: D };
    const direct = directDelta(kind, q, noise * D, D, eps, T);
    const pld = pldDelta([{ step, count: T }], eps);
    const what = `${kind} q=${q} noise=${noise} D=${D} eps=${eps} T=${T}`;
    assert.ok(pld.delta >= direct - 1e-12, `${what}: ${pld.delta} below the direct ${direct}`);
    assert.ok(pld.delta - direct <= 1e-3 * direct + 1e-9, `${what}: ${pld.delta} vs ${direct}`);
    assert.ok(pld.deltaLower <= direct + 1e-12, `${what}: lower ${pld.deltaLower}`);
  }
});

const Q = 16 / 1000, T = 75000, DELTA = 1e-5;

Deno.test("dpzo privacy, discrete mechanism: at or above the continuous reference values", () => {
  // dp_accounting / prv_accountant (continuous Gaussian), 4 digits: as privacy_accounting_test
  for (const [sigma, published] of [[4.8, 3.995], [16.4, 0.998], [30.9, 0.4987]]) {
    const flags = {
      samplingRate: String(Q),
      steps: String(T),
      delta: String(DELTA),
      sigma: String(sigma),
      mechanism: "gaussian",
      accountant: "pld",
    };
    const discrete = runPrivacy(parsePrivacyFlags(flags)).json;
    const continuous = runPrivacy(parsePrivacyFlags({ ...flags, continuous: true })).json;
    assert.equal(discrete.noise, "discrete");
    assert.equal(discrete.grid_units, gridUnits(sigma));
    const eps = discrete.epsilon as number;
    assert.ok(eps >= (continuous.epsilon as number), `sigma=${sigma}: ${eps} below continuous`);
    assert.ok(eps >= published - 5e-4, `sigma=${sigma}: ${eps} below published ${published}`);
    // CKS20: essentially the same privacy; the exact discrete epsilon is within 1e-4
    const exact = discrete.epsilon_discrete_exact as number;
    assert.ok(Math.abs(exact / (continuous.epsilon as number) - 1) < 1e-4, `${exact}`);
  }
  // Laplace, and the RDP accountant: never below the continuous one either
  const lap = { mechanism: "laplace", q: 0.05, b: 5 } as const;
  const lapD = ledgerEpsilon([{ step: { ...lap, gridUnits: gridUnits(5) }, count: 100 }], DELTA);
  const lapC = ledgerEpsilon([{ step: lap, count: 100 }], DELTA);
  assert.ok(lapD.epsilon >= lapC.epsilon);
  const g = { mechanism: "gaussian", q: Q, sigma: 4.8 } as const;
  const rdpD = ledgerEpsilon([{ step: { ...g, gridUnits: 853 }, count: T }], DELTA, "rdp");
  const rdpC = ledgerEpsilon([{ step: g, count: T }], DELTA, "rdp");
  assert.ok(rdpD.epsilon >= rdpC.epsilon);
});

Deno.test("a small grid can cost privacy, and the accountant reports the larger epsilon", () => {
  // sigma D = 0.6 units: the discrete Gaussian is far from the continuous one here
  const step = { mechanism: "gaussian", q: 1, sigma: 0.6 } as const;
  const d = ledgerEpsilon([{ step: { ...step, gridUnits: 1 }, count: 1 }], DELTA);
  assert.equal(d.epsilon, Math.max(d.discrete!.exact, d.discrete!.continuous));
  assert.notEqual(d.discrete!.exact, d.discrete!.continuous);
});

Deno.test("calibration for the discrete mechanism meets the target with its own epsilon", () => {
  const c = calibrateNoise({
    mechanism: "gaussian",
    q: Q,
    steps: 2000,
    epsilon: 2,
    delta: DELTA,
    discrete: true,
  });
  const step = {
    mechanism: "gaussian",
    q: Q,
    sigma: c.noise,
    gridUnits: gridUnits(c.noise),
  } as const;
  assert.ok(ledgerEpsilon([{ step, count: 2000 }], DELTA).epsilon <= 2);
  assert.equal(c.epsilon, ledgerEpsilon([{ step, count: 2000 }], DELTA).epsilon);
});
