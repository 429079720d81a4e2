/**
 * The accountant the trainer uses: epsilon spent by the ledger so far, and whether one more
 * step keeps the run within its (epsilon, delta) target (DESIGN.md, invariant 4: training
 * stops before the target would be exceeded).
 *
 * Accountants: "pld" (default; tight, privacy loss distributions with pessimistic
 * discretisation, see pld.ts), "prv" (an alias of "pld": the PRV of Gopi et al. 2021 and the
 * PLD are the same distribution, and this engine computes it), "rdp" (Rényi DP, rdp.ts; looser).
 * Laplace-only ledgers are also bounded by pure DP (laplace.ts); the smaller epsilon is used.
 */
import type { LedgerStepPrivacy } from "./mechanisms.ts";
import { groupSteps, mergeGroups, pldEpsilon, type PldOptions, type StepGroup } from "./pld.ts";
import { rdpEpsilon } from "./rdp.ts";
import { laplacePureEpsilon } from "./laplace.ts";

export type AccountantName = "pld" | "prv" | "rdp";
export const ACCOUNTANT_NAMES: readonly AccountantName[] = ["pld", "prv", "rdp"];

export interface EpsilonReport {
  /** Upper bound on epsilon at `delta`. */
  epsilon: number;
  /** Discretisation error of `epsilon` (upper minus lower estimate); 0 for closed forms. */
  error: number;
  delta: number;
  /** The accountant that produced `epsilon` ("pure" when pure DP was the tighter bound). */
  accountant: "pld" | "rdp" | "pure";
  /** Pure-DP epsilon (delta = 0) when every step is Laplace. */
  epsilonPure?: number;
  /**
   * Ledgers with discrete steps: the exact epsilon of the discrete mechanism, and the
   * continuous reference for the same noise; `epsilon` is the larger.
   */
  discrete?: { exact: number; continuous: number };
}

export interface Accountant {
  name: AccountantName;
  epsilon(steps: readonly LedgerStepPrivacy[] | readonly StepGroup[], delta: number): EpsilonReport;
}

export interface PrivacyTarget {
  epsilon: number;
  delta: number;
}

function asGroups(steps: readonly LedgerStepPrivacy[] | readonly StepGroup[]): StepGroup[] {
  if (steps.length === 0) return [];
  const first = steps[0] as Partial<StepGroup>;
  if (first.step !== undefined && first.count !== undefined) {
    return mergeGroups(steps as readonly StepGroup[]);
  }
  return groupSteps(steps as readonly LedgerStepPrivacy[]);
}

/**
 * Epsilon of a ledger (entries or groups) at delta, by the named accountant.
 *
 * Ledgers with discrete steps (discrete.ts) are accounted twice: with their exact discrete
 * privacy loss (PLD, and pure DP for Laplace), and as if their noise were continuous with the
 * same sigma or b (the named accountant). The larger epsilon is reported: an upper bound for the
 * discrete mechanism that is never below the continuous reference.
 */
export function ledgerEpsilon(
  steps: readonly LedgerStepPrivacy[] | readonly StepGroup[],
  delta: number,
  name: AccountantName = "pld",
  opts: PldOptions = {},
): EpsilonReport {
  const groups = asGroups(steps);
  if (groups.length === 0) return { epsilon: 0, error: 0, delta, accountant: "pure" };
  // A run asks the same question several times (progress, summary, report, statement): the
  // answer is kept. One with the lower estimate also answers a question without it.
  const bounds = opts.bounds ?? true;
  const key = JSON.stringify([groups, delta, name, opts.tailMass, opts.fftSize]);
  const known = remembered.get(key);
  if (known && (known.bounds || !bounds)) return known.report;
  const report = computeEpsilon(groups, delta, name, opts);
  if (remembered.size >= 64) remembered.delete(remembered.keys().next().value!);
  remembered.set(key, { report, bounds });
  return report;
}

const remembered = new Map<string, { report: EpsilonReport; bounds: boolean }>();

function computeEpsilon(
  groups: StepGroup[],
  delta: number,
  name: AccountantName,
  opts: PldOptions,
): EpsilonReport {
  if (groups.some((g) => g.step.gridUnits !== undefined)) {
    const continuous = mergeGroups(groups.map(({ step, count }) => {
      const { gridUnits: _units, ...rest } = step;
      return { step: rest, count };
    }));
    const reference = continuousEpsilon(continuous, delta, name, opts);
    const exact = continuousEpsilon(groups, delta, "pld", opts);
    const worse = exact.epsilon > reference.epsilon ? exact : reference;
    return { ...worse, discrete: { exact: exact.epsilon, continuous: reference.epsilon } };
  }
  return continuousEpsilon(groups, delta, name, opts);
}

/** The accountants on one set of groups (discrete groups use their exact losses in PLD). */
function continuousEpsilon(
  groups: StepGroup[],
  delta: number,
  name: AccountantName,
  opts: PldOptions,
): EpsilonReport {
  const pure = laplacePureEpsilon(groups);
  const epsilonPure = Number.isFinite(pure) ? pure : undefined;
  if (delta === 0) {
    return { epsilon: pure, error: 0, delta, accountant: "pure", epsilonPure };
  }
  let r: EpsilonReport;
  if (name === "rdp") {
    r = { epsilon: rdpEpsilon(groups, delta).epsilon, error: 0, delta, accountant: "rdp" };
  } else {
    const p = pldEpsilon(groups, delta, opts);
    r = { epsilon: p.epsilon, error: p.error, delta, accountant: "pld" };
  }
  if (pure < r.epsilon) r = { epsilon: pure, error: 0, delta, accountant: "pure" };
  return { ...r, epsilonPure };
}

/** An accountant object for the trainer. */
export function makeAccountant(name: AccountantName = "pld", opts: PldOptions = {}): Accountant {
  return { name, epsilon: (steps, delta) => ledgerEpsilon(steps, delta, name, opts) };
}

/**
 * True when the ledger plus one more step `next` stays within the target: the step may be
 * taken (and must then be logged before it is released).
 */
export function canTakeStep(
  accountant: Accountant,
  steps: readonly LedgerStepPrivacy[] | readonly StepGroup[],
  next: LedgerStepPrivacy,
  target: PrivacyTarget,
): boolean {
  const groups = mergeGroups([...asGroups(steps), { step: next, count: 1 }]);
  return accountant.epsilon(groups, target.delta).epsilon <= target.epsilon;
}
