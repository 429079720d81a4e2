/**
 * The privacy plan of a run, fixed before the first step: the noise (given, or calibrated to the
 * target epsilon), its grid, and the number of steps the budget allows — training stops before
 * the target (epsilon, delta) would be exceeded (DESIGN.md, invariant 4).
 *
 * A resumed run never recalibrates: its plan is the one run.json recorded, its ledger must have
 * been run with it, and a config that no longer agrees (another sigma, b, q, clip, grid, unit or
 * step count) is refused with the field to restore (`resumePrivacyPlan`, `checkLedgerPlan`).
 */
import { z } from "zod";
import type { RunConfig } from "../src/dpzo/config.ts";
import { type Mechanism, vectorClipUnits } from "../src/dpzo/mechanism.ts";
import type { PrivacyUnit } from "../src/dpzo/privacy_units.ts";
import { gridUnits } from "../src/privacy/mod.ts";
import { isLegacyEntry, type LedgerEntry } from "../src/checkpoint/ledger.ts";
import { formatZodError, UsageError } from "../src/validation.ts";
import { calibrateNoise, epsilonOf } from "./privacy_accounting.ts";

export interface PrivacyPlan {
  mechanism: Mechanism;
  /** sigma (Gaussian) or b (Laplace). */
  noiseMultiplier: number;
  /** D: the clip C in grid units (the grid is C / D); the noise is discrete on it. */
  gridUnits: number;
  q: number;
  delta: number;
  /** Steps the run takes: the configured steps, or fewer when the target would be exceeded. */
  steps: number;
  accountant: "pld" | "prv" | "rdp";
  target_epsilon: number | null;
  unit: PrivacyUnit;
  /** Epsilon spent after t steps, and the accountant's discretisation error. */
  epsilonAt(t: number, opts?: { bounds?: boolean }): { epsilon: number; error: number };
}

/** The sampling rate of a config: expected batch / training examples (of passages too). */
export function samplingRate(config: RunConfig): number {
  return config.train.batch_size / config.task.train_examples;
}

/**
 * K > 1 directions clip each K-vector to D - sqrt(K) grid units (mechanism.ts), so that rounding
 * stays within D. The grid is about 4096 / sigma units of C: very large noise makes it coarse,
 * and the radius shrinks. Below one unit nothing can be released: refused before the run; a loss
 * of more than a tenth of C is said.
 */
function checkDirectionsGrid(units: number, K: number, noise: number, log: (l: string) => void) {
  if (K <= 1) return;
  const radius = vectorClipUnits(units, K);
  const fix = "lower train.directions or the noise (a larger target epsilon)";
  if (radius < 1) {
    throw new UsageError(
      `train.directions: ${K} directions need a noise grid finer than sqrt(${K}) units of C, ` +
        `but noise ${noise} gives ${units} units; ${fix}`,
    );
  }
  if (radius < 0.9 * units) {
    log(
      `privacy: WARNING: with noise ${noise} the grid has ${units} units of C, so ${K} ` +
        `directions clip to ${radius.toFixed(2)} units (${(100 * radius / units).toFixed(0)}% ` +
        `of C) to keep rounding within C; ${fix}`,
    );
  }
}

function withSteps(
  config: RunConfig,
  noise: number,
  log: (l: string) => void,
): PrivacyPlan {
  const p = config.privacy;
  const q = samplingRate(config);
  const T = config.train.steps;
  const units = gridUnits(noise);
  checkDirectionsGrid(units, config.train.directions, noise, log);
  const base = { q, delta: p.delta, mechanism: p.mechanism, accountant: p.accountant };
  const epsilonAt = (t: number, opts: { bounds?: boolean } = {}) =>
    epsilonOf({ ...base, steps: t, noise, gridUnits: units, bounds: opts.bounds });
  const target = p.target_epsilon ?? null;
  let steps = T;
  if (target !== null && epsilonAt(T, { bounds: false }).epsilon > target) {
    // Largest t with epsilon(t) <= target: epsilon grows with t, so bisect.
    let lo = 0, hi = T;
    while (hi - lo > 1) {
      const mid = Math.floor((lo + hi) / 2);
      if (epsilonAt(mid, { bounds: false }).epsilon <= target) lo = mid;
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
    gridUnits: units,
    q,
    delta: p.delta,
    steps,
    accountant: p.accountant,
    target_epsilon: target,
    unit: p.unit,
    epsilonAt,
  };
}

/** The plan of a new run: the configured noise, or the least that meets the target. */
export function planPrivacy(config: RunConfig, log: (l: string) => void): PrivacyPlan {
  const p = config.privacy;
  let noise = (p.mechanism === "gaussian" ? p.sigma : p.b) ?? undefined;
  if (noise === undefined) {
    const q = samplingRate(config), T = config.train.steps;
    noise = calibrateNoise({
      q,
      delta: p.delta,
      mechanism: p.mechanism,
      accountant: p.accountant,
      steps: T,
      epsilon: p.target_epsilon!,
    });
    log(
      `privacy: calibrated ${p.mechanism === "gaussian" ? "sigma" : "b"} = ${noise} for ` +
        `(${p.target_epsilon}, ${p.delta})-DP over ${T} steps at q = ${q} (${p.accountant})`,
    );
  }
  return withSteps(config, noise, log);
}

/** The plan as run.json records it (`privacy_plan`). */
const RecordedPlan = z.object({
  mechanism: z.enum(["gaussian", "laplace"]),
  noiseMultiplier: z.number().positive(),
  gridUnits: z.number().int().positive(),
  q: z.number(),
  delta: z.number(),
  steps: z.number().int().nonnegative(),
  accountant: z.enum(["pld", "prv", "rdp"]),
  target_epsilon: z.number().nullable(),
  unit: z.enum(["example", "context"]),
}).passthrough();

const OLD_FORMAT = "it was written by a dpzo before ledger format 2 (floating-point noise, " +
  "wall-clock times in the ledger); it still replays (dpzo export, dpzo eval --run) but cannot " +
  "be resumed: start a new run";

/**
 * The plan of a resumed run: run.json's recorded plan, never recalibrated; the config (run.json)
 * must still agree with it, else the field to restore is named.
 */
export function resumePrivacyPlan(
  config: RunConfig,
  recorded: unknown,
  where: string,
): PrivacyPlan {
  if (recorded === undefined || recorded === null) {
    throw new Error(`${where}: privacy_plan: missing; ${OLD_FORMAT}`);
  }
  const r = RecordedPlan.safeParse(recorded);
  if (!r.success) {
    if (typeof recorded === "object" && !("gridUnits" in recorded)) {
      throw new Error(`${where}: privacy_plan has no grid: ${OLD_FORMAT}`);
    }
    throw new Error(`${where}: privacy_plan: ${formatZodError(r.error)}`);
  }
  const rec = r.data;
  const p = config.privacy;
  const refuse = (field: string, was: unknown, now: unknown, fix = `restore ${field}: ${was}`) => {
    throw new Error(
      `${where}: ${field} is ${now} but the run's ledger was made with ${was}; a resumed run ` +
        `keeps its privacy settings: ${fix} (or start a new run)`,
    );
  };
  if (p.mechanism !== rec.mechanism) refuse("privacy.mechanism", rec.mechanism, p.mechanism);
  const noiseName = rec.mechanism === "gaussian" ? "privacy.sigma" : "privacy.b";
  const given = rec.mechanism === "gaussian" ? p.sigma : p.b;
  if (given != null && given !== rec.noiseMultiplier) {
    refuse(noiseName, rec.noiseMultiplier, given);
  }
  const q = samplingRate(config);
  if (q !== rec.q) {
    refuse(
      "train.batch_size",
      rec.q * config.task.train_examples,
      config.train.batch_size,
      `restore train.batch_size and task.train_examples (q = ${rec.q}, now ${q})`,
    );
  }
  if (p.delta !== rec.delta) refuse("privacy.delta", rec.delta, p.delta);
  if (p.unit !== rec.unit) refuse("privacy.unit", rec.unit, p.unit);
  if ((p.target_epsilon ?? null) !== rec.target_epsilon) {
    refuse("privacy.target_epsilon", rec.target_epsilon, p.target_epsilon ?? null);
  }
  if (gridUnits(rec.noiseMultiplier) !== rec.gridUnits) {
    refuse("privacy_plan.gridUnits", gridUnits(rec.noiseMultiplier), rec.gridUnits);
  }
  const plan = withSteps(config, rec.noiseMultiplier, () => {});
  if (plan.steps !== rec.steps) {
    refuse(
      "train.steps",
      rec.steps,
      config.train.steps,
      `restore train.steps (${rec.steps} planned)`,
    );
  }
  return plan;
}

/**
 * Every ledger entry must have been run with the plan (the same q, noise, grid, clip and unit),
 * and there must be no more of them than the plan allows; the error names the line.
 */
export function checkLedgerPlan(
  entries: readonly LedgerEntry[],
  plan: PrivacyPlan,
  clip: number,
  ledgerPath: string,
): void {
  if (entries.length > plan.steps) {
    throw new Error(
      `${ledgerPath}: holds ${entries.length} steps, more than the ${plan.steps} the run's ` +
        `privacy plan allows; restore train.steps or start a new run`,
    );
  }
  entries.forEach((e, i) => {
    const at = `${ledgerPath}:${i + 1}`;
    if (isLegacyEntry(e)) throw new Error(`${at}: ${OLD_FORMAT}`);
    const noise = plan.mechanism === "gaussian" ? e.sigma : e.b;
    const name = plan.mechanism === "gaussian" ? "sigma" : "b";
    const differ = (field: string, was: unknown, now: unknown) =>
      new Error(
        `${at}: step ${e.step} was run with ${field} = ${was}, the run's config says ${now}; ` +
          `a resumed run keeps the ledger's privacy settings: restore them in run.json, or ` +
          `start a new run`,
      );
    if (e.mechanism !== plan.mechanism) throw differ("mechanism", e.mechanism, plan.mechanism);
    if (noise !== plan.noiseMultiplier) throw differ(name, noise, plan.noiseMultiplier);
    if (e.q !== plan.q) throw differ("q (train.batch_size / train_examples)", e.q, plan.q);
    if (e.grid_units !== plan.gridUnits) throw differ("grid_units", e.grid_units, plan.gridUnits);
    if (e.clip !== clip) throw differ("clip (privacy.clip)", e.clip, clip);
    if ((e.unit ?? "example") !== plan.unit) throw differ("unit (privacy.unit)", e.unit, plan.unit);
  });
}
