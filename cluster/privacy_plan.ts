/**
 * The privacy plan of a run, fixed before the first step: the noise (given, or calibrated to the
 * target epsilon), and the number of steps the budget allows — training stops before the
 * target (epsilon, delta) would be exceeded (DESIGN.md, invariant 4).
 */
import type { RunConfig } from "../src/dpzo/config.ts";
import type { Mechanism } from "../src/dpzo/mechanism.ts";
import { calibrateNoise, epsilonOf } from "./privacy_accounting.ts";

export interface PrivacyPlan {
  mechanism: Mechanism;
  /** sigma (Gaussian) or b (Laplace). */
  noiseMultiplier: number;
  q: number;
  delta: number;
  /** Steps the run takes: the configured steps, or fewer when the target would be exceeded. */
  steps: number;
  accountant: string;
  target_epsilon: number | null;
  /** Epsilon spent after t steps, and the accountant's discretisation error. */
  epsilonAt(t: number): { epsilon: number; error: number };
}

export function planPrivacy(config: RunConfig, log: (l: string) => void): PrivacyPlan {
  const p = config.privacy;
  const q = config.train.batch_size / config.task.train_examples;
  const T = config.train.steps;
  const base = { q, delta: p.delta, mechanism: p.mechanism, accountant: p.accountant };
  let noise = (p.mechanism === "gaussian" ? p.sigma : p.b) ?? undefined;
  const target = p.target_epsilon ?? null;
  if (noise === undefined) {
    noise = calibrateNoise({ ...base, steps: T, epsilon: target! });
    log(
      `privacy: calibrated ${p.mechanism === "gaussian" ? "sigma" : "b"} = ${noise} for ` +
        `(${target}, ${p.delta})-DP over ${T} steps at q = ${q} (${p.accountant})`,
    );
  }
  const epsilonAt = (t: number) => epsilonOf({ ...base, steps: t, noise: noise! });
  let steps = T;
  if (target !== null && epsilonAt(T).epsilon > target) {
    // Largest t with epsilon(t) <= target: epsilon grows with t, so bisect.
    let lo = 0, hi = T;
    while (hi - lo > 1) {
      const mid = Math.floor((lo + hi) / 2);
      if (epsilonAt(mid).epsilon <= target) lo = mid;
      else hi = mid;
    }
    steps = lo;
    log(
      `privacy: WARNING: ${T} steps would exceed the target epsilon ${target}; ` +
        `the run stops after ${steps} steps. Raise the noise or lower train.steps.`,
    );
    if (steps === 0) {
      throw new Error("privacy: the target epsilon does not allow a single step; raise the noise");
    }
  }
  return {
    mechanism: p.mechanism,
    noiseMultiplier: noise,
    q,
    delta: p.delta,
    steps,
    accountant: p.accountant,
    target_epsilon: target,
    epsilonAt,
  };
}
