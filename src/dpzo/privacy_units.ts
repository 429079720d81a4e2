/**
 * Privacy units: what one neighbouring dataset adds or removes.
 *
 * - `example` (the paper's setting): one training example. Where examples share a passage
 *   (SQuAD, DROP: up to dozens of questions about one passage), a passage is protected only as a
 *   group of its examples, and the privacy statement names the largest such group.
 * - `context`: one passage with all its training examples. Passages are Poisson-sampled at rate
 *   q, every example of a sampled passage joins the batch, and the sum of a passage's g_i is
 *   clipped to C (src/dpzo/mechanism.ts), so the guarantee is per passage.
 *
 * And the delta rule: delta is the probability that the guarantee fails; above 1/n (n units)
 * a mechanism that publishes one random unit in full meets it, so such a delta is refused
 * unless `privacy.allow_large_delta`, and delta = 1/n is warned about.
 */
import type { ExampleRequest } from "../tasks/task.ts";

export type PrivacyUnit = "example" | "context";

export interface TrainingUnits {
  unit: PrivacyUnit;
  /**
   * Context units: the example indices of each passage (in order of first appearance);
   * undefined for example units (each example is its own unit).
   */
  groups?: number[][];
  /** How many units the training set holds (n of delta < 1/n, and of q = batch / n). */
  count: number;
  /** Examples that share one passage, at most (1 when no passage repeats; null without any). */
  largestPassage: number | null;
}

/** The units of a training set. */
export function trainingUnits(train: readonly ExampleRequest[], unit: PrivacyUnit): TrainingUnits {
  const byPassage = new Map<string, number[]>();
  train.forEach((ex, i) => {
    if (ex.passage === undefined) return;
    const g = byPassage.get(ex.passage);
    if (g) g.push(i);
    else byPassage.set(ex.passage, [i]);
  });
  const largestPassage = byPassage.size
    ? Math.max(...[...byPassage.values()].map((g) => g.length))
    : null;
  if (unit === "example") return { unit, count: train.length, largestPassage };
  if (byPassage.size === 0 || train.some((ex) => ex.passage === undefined)) {
    throw new Error(
      "privacy.unit: context needs every training example to name its passage (squad, drop)",
    );
  }
  const groups = [...byPassage.values()];
  return { unit, groups, count: groups.length, largestPassage };
}

/** Warns when delta >= 1/n and refuses delta > 1/n unless allowed; the message names n. */
export function checkDelta(
  delta: number,
  units: TrainingUnits,
  allowLarge: boolean,
  log: (line: string) => void,
): void {
  const n = units.count;
  const what = units.unit === "context" ? "passages" : "training examples";
  if (delta > 1 / n && !allowLarge) {
    throw new Error(
      `privacy.delta: ${delta} is above 1/n = ${1 / n} for n = ${n} ${what}: with such a ` +
        `delta, publishing one ${units.unit} in full would meet the guarantee. Lower ` +
        `privacy.delta (e.g. --set privacy.delta=${smaller(n)}), or set ` +
        `privacy.allow_large_delta: true to run anyway`,
    );
  }
  if (delta >= 1 / n) {
    log(
      `privacy: WARNING: delta ${delta} is not below 1/n = ${1 / n} (n = ${n} ${what}); ` +
        `the usual choice is delta well below 1/n (e.g. ${smaller(n)})`,
    );
  }
}

/** A power of ten well below 1/n. */
function smaller(n: number): number {
  return 10 ** -Math.ceil(Math.log10(n) + 1);
}
