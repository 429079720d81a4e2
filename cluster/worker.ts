/**
 * A stage worker: owns a contiguous slice of the model, perturbs and updates only that slice in
 * place, runs its part of the forward pass, and (as the last stage) turns features into scores.
 *
 * Its step state machine accepts control messages in order — begin(t), flip(t), then for a
 * step of K > 1 directions (next(t), flip(t)) K - 1 times, then update(t) or abort(t) — and
 * refuses anything else, so a duplicated or stray message can never apply a pass twice.
 */
import * as tf from "@tensorflow/tfjs-core";
import { logProbsAt, type Stage, stageForward } from "../src/model/opt.ts";
import { commitHalf } from "../src/model/weights.ts";
import { narrowNearest, widen } from "../src/model/half.ts";
import {
  mezoDecayApplies,
  type NamedTensor,
  perturb,
  perturbPasses,
} from "../src/dpzo/perturbation.ts";
import { tensorDigest } from "../src/checkpoint/weights_hash.ts";
import type { ControlMessage, ForwardRequest, ForwardResult } from "./protocol.ts";
import { type LedgerEntry, type StepPass, stepPasses } from "../src/checkpoint/ledger.ts";
import { combineDigests } from "../src/checkpoint/weights_hash.ts";
import { readSnapshot, snapshotSteps, writeSnapshot } from "../src/checkpoint/snapshot.ts";

export interface StageWorker {
  stage: Stage;
  /** Names of the tensors this stage perturbs (all of them, or only LoRA's). */
  trainable: string[];
  /** Last step whose update was applied. */
  appliedStep: number;
  phase: "idle" | "plus" | "minus";
  current?: InFlight;
  /** Seconds spent in perturbation passes (for metrics). */
  perturbSeconds: number;
}

/**
 * The step in flight: `seed` is its last direction (the one whose restore is fused with the
 * update), `extra` the directions evaluated before it (K > 1), `at` the index of the direction
 * in force in the evaluation order [...extra, seed].
 */
export interface InFlight {
  step: number;
  seed: bigint;
  phi: number;
  extra: bigint[];
  at: number;
}

/** The seed of the direction in force. */
function inForce(c: InFlight): bigint {
  return c.at < c.extra.length ? c.extra[c.at] : c.seed;
}

/** Passes of the step in flight already applied (its index in `stepPasses`). */
function passesDone(w: StageWorker): number {
  return 3 * w.current!.at + (w.phase === "plus" ? 1 : 2);
}

export function createStageWorker(stage: Stage, trainable: string[], appliedStep = 0): StageWorker {
  for (const name of trainable) {
    if (!stage.weights.has(name)) throw new Error(`worker: stage does not hold ${name}`);
  }
  return { stage, trainable, appliedStep, phase: "idle", perturbSeconds: 0 };
}

/** The trainable tensors stored in float32: perturbed and updated in place. */
function inPlaceTensors(w: StageWorker): NamedTensor[] {
  const out: NamedTensor[] = [];
  for (const name of w.trainable) {
    const data = w.stage.weights.get(name)!;
    if (data instanceof Float32Array) out.push({ name, data });
  }
  return out;
}

/** The trainable tensors stored in half precision: perturbed virtually, updated when committed. */
function halfTensors(w: StageWorker): string[] {
  return w.trainable.filter((name) => w.stage.weights.get(name) instanceof Uint16Array);
}

/**
 * One pass of a step over the trainable tensors: `theta += coeff z(seed)`, for a perturbation
 * pass (`update` false: +phi, -2 phi, or their undoing) or the step's update (`update` true:
 * restore and update in one pass, optionally with MeZO weight decay). Float32 tensors change in
 * place. Half-stored ones (src/model/weights.ts) never take a perturbation into their store: a
 * perturbation pass adds to the stage's virtual perturbation, which the forward applies as it
 * reads them, and the update writes theta + (everything in force) z with stochastic rounding.
 */
export function applyPass(
  w: StageWorker,
  seed: bigint,
  coeff: number,
  update: boolean,
  decay?: { lr: number; decay: number },
): void {
  const t0 = performance.now();
  const weightDecay = decay && decay.decay > 0
    ? { lr: decay.lr, decay: decay.decay, appliesTo: mezoDecayApplies }
    : undefined;
  perturb(inPlaceTensors(w), seed, coeff, { weightDecay });
  const half = halfTensors(w);
  if (half.length > 0) {
    const v = w.stage.virtual;
    if (v && v.seed !== seed) {
      throw new Error(`worker: a pass of seed ${seed} while the one of seed ${v.seed} is in force`);
    }
    const total = (v?.coeff ?? 0) + coeff;
    if (update) {
      commitHalf(w.stage, half, seed, total, weightDecay);
      w.stage.virtual = undefined;
    } else {
      w.stage.virtual = total === 0 ? undefined : { seed, coeff: total, names: new Set(half) };
    }
  }
  w.perturbSeconds += (performance.now() - t0) / 1000;
}

/**
 * The update passes of a step of K > 1 directions: the last direction's restore + update (with
 * the decay), then each extra direction's update. Float32 tensors take them in one sweep
 * (`perturbPasses`: the same bits as the passes one by one, which replay applies); half-stored
 * ones commit each pass with its own stochastic rounding (`applyPass`).
 */
export function applyUpdatePasses(
  w: StageWorker,
  passes: { seed: bigint; coeff: number }[],
  decay: { lr: number; decay: number },
): void {
  const t0 = performance.now();
  const weightDecay = decay.decay > 0
    ? { lr: decay.lr, decay: decay.decay, appliesTo: mezoDecayApplies }
    : undefined;
  perturbPasses(
    inPlaceTensors(w),
    passes.map((p, i) => ({ ...p, weightDecay: i === 0 ? weightDecay : undefined })),
  );
  w.perturbSeconds += (performance.now() - t0) / 1000;
  if (halfTensors(w).length === 0) return;
  // The half-stored tensors (the float32 ones are done): applyPass on a view of only them.
  const half = { ...w, trainable: halfTensors(w) };
  passes.forEach((p, i) => applyPass(half, p.seed, p.coeff, true, i === 0 ? decay : undefined));
  w.perturbSeconds = half.perturbSeconds;
}

/** Applies a control message; throws (without changing anything) when it is out of order. */
export function handleControl(w: StageWorker, msg: ControlMessage): void {
  switch (msg.type) {
    case "step.begin": {
      if (w.phase !== "idle" || msg.step !== w.appliedStep + 1) {
        throw new Error(
          `worker: step.begin ${msg.step} out of order (applied ${w.appliedStep}, ${w.phase})`,
        );
      }
      const extra = (msg.extra_seeds ?? []).map((s) => BigInt(s));
      const cur: InFlight = { step: msg.step, seed: BigInt(msg.seed), phi: msg.phi, extra, at: 0 };
      applyPass(w, inForce(cur), msg.phi, false);
      w.current = cur;
      w.phase = "plus";
      return;
    }
    case "step.flip": {
      if (w.phase !== "plus" || w.current?.step !== msg.step) {
        throw new Error(`worker: step.flip ${msg.step} out of order (${w.phase})`);
      }
      applyPass(w, inForce(w.current), -2 * w.current.phi, false);
      w.phase = "minus";
      return;
    }
    case "step.next": {
      const c = w.current;
      if (w.phase !== "minus" || c?.step !== msg.step || c.at >= c.extra.length) {
        throw new Error(`worker: step.next ${msg.step} out of order (${w.phase})`);
      }
      // Restore the direction just measured, then perturb along the next one.
      applyPass(w, inForce(c), c.phi, false);
      c.at++;
      applyPass(w, inForce(c), c.phi, false);
      w.phase = "plus";
      return;
    }
    case "step.update": {
      const c = w.current;
      if (w.phase !== "minus" || c?.step !== msg.step || c.at !== c.extra.length) {
        throw new Error(`worker: step.update ${msg.step} out of order (${w.phase})`);
      }
      const coeffs = msg.extra_coeffs ?? [];
      if (coeffs.length !== c.extra.length) {
        throw new Error(
          `worker: step.update ${msg.step} has ${coeffs.length} extra coefficients for ` +
            `${c.extra.length} extra directions`,
        );
      }
      if (c.extra.length === 0) {
        applyPass(w, c.seed, msg.coeff, true, { lr: msg.lr, decay: msg.weight_decay });
      } else {
        applyUpdatePasses(
          w,
          [
            { seed: c.seed, coeff: msg.coeff },
            ...c.extra.map((seed, i) => ({ seed, coeff: coeffs[i] })),
          ],
          { lr: msg.lr, decay: msg.weight_decay },
        );
      }
      w.appliedStep = msg.step;
      w.phase = "idle";
      w.current = undefined;
      return;
    }
    case "step.abort": {
      if (w.current?.step !== msg.step) return; // nothing of that step was applied here
      // Undo exactly the passes of the direction in force, in reverse (earlier directions were
      // restored by their own passes): the weights return to theta up to float32 rounding.
      const seed = inForce(w.current);
      if (w.phase === "minus") applyPass(w, seed, 2 * w.current.phi, false);
      applyPass(w, seed, -w.current.phi, false);
      w.phase = "idle";
      w.current = undefined;
      return;
    }
  }
}

/**
 * Runs this stage on a micro-batch. The first stage reads token ids; later stages read the
 * previous stage's hidden states. The last stage returns scores, the others hidden states.
 */
export function forwardStage(
  w: StageWorker,
  req: ForwardRequest,
  hidden?: Float32Array,
): { hidden?: Float32Array; result?: ForwardResult } {
  const { stage } = w;
  const batch = { batchSize: req.batchSize, seqLen: req.seqLen, ids: req.ids, mask: req.mask };
  const input = hidden
    ? tf.tensor2d(hidden, [stage.config.hiddenSize, req.batchSize * req.seqLen])
    : undefined;
  const out = stageForward(stage, batch, input);
  input?.dispose();
  if (!stage.range.head) {
    const data = out.dataSync() as Float32Array;
    out.dispose();
    return { hidden: data };
  }
  const lp = logProbsAt(stage, out, req.pairPos, req.pairTok);
  out.dispose();
  const sums = new Float64Array(req.numScores), counts = new Float64Array(req.numScores);
  for (let k = 0; k < lp.length; k++) {
    sums[req.pairScore[k]] += lp[k];
    counts[req.pairScore[k]]++;
  }
  const scores = new Float32Array(req.numScores);
  for (let i = 0; i < scores.length; i++) scores[i] = sums[i] / counts[i];
  return { result: { step: req.step, micro: req.micro, sign: req.sign, scores } };
}

/** Applies the passes of one released step (the ledger's coefficients), from `from` on. */
export function applyEntryPasses(w: StageWorker, e: LedgerEntry, from = 0): void {
  stepPasses(e).forEach((pass: StepPass, i) => {
    if (i < from) return;
    const decay = pass.decay ? { lr: e.lr, decay: e.weight_decay } : undefined;
    applyPass(w, pass.seed, pass.coeff, pass.update, decay);
  });
}

/** Whether a ledger entry is the step in flight (same step, seeds and phi). */
function sameStep(e: LedgerEntry, c: InFlight): boolean {
  const extra = (e.extra_directions ?? []).map((d) => BigInt(d.seed));
  return BigInt(e.seed) === c.seed && e.phi === c.phi && extra.length === c.extra.length &&
    extra.every((s, i) => s === c.extra[i]);
}

/**
 * Brings a worker to exactly "steps 1..L applied, no step in flight" from the ledger — the same
 * in-place passes, in the same order, with the same coefficients as the live run, so the result
 * is bit-identical (DESIGN.md, "Floating point does not cancel"):
 *
 * - a step in flight that the ledger holds (its update never arrived) is completed with the
 *   ledger's passes;
 * - a step in flight that the ledger does not hold was not released: subtracting its
 *   perturbation would not give the weights back bit for bit, so the slice is rebuilt
 *   (`rebuild`: the base slice or the newest snapshot) and replayed;
 * - missing steps are replayed.
 *
 * `entry(s)` returns ledger entry s (1-based). Returns the worker to use from now on (a new one
 * after a rebuild).
 */
export async function syncWorker(
  w: StageWorker,
  L: number,
  entry: (step: number) => Promise<LedgerEntry>,
  rebuild: (maxStep: number) => Promise<StageWorker>,
): Promise<StageWorker> {
  if (w.phase !== "idle") {
    const cur = w.current!;
    const e = cur.step <= L ? await entry(cur.step) : undefined;
    if (e && cur.step === w.appliedStep + 1 && sameStep(e, cur)) {
      applyEntryPasses(w, e, passesDone(w));
      w.appliedStep = cur.step;
      w.phase = "idle";
      w.current = undefined;
    } else {
      w = await rebuild(L);
    }
  }
  if (w.appliedStep > L) {
    // Ahead of the ledger: impossible unless the ledger lost released steps.
    throw new Error(
      `worker: this slice has step ${w.appliedStep} applied but the ledger ends at step ${L}; ` +
        `the ledger lost released steps (invariant 4): restore it before resuming`,
    );
  }
  for (let s = w.appliedStep + 1; s <= L; s++) {
    const e = await entry(s);
    if (e.step !== s) throw new Error(`worker: ledger entry ${s} holds step ${e.step}`);
    applyEntryPasses(w, e, 0);
    w.appliedStep = s;
  }
  return w;
}

/** Writes the snapshot of this stage at its applied step (RUN_DIR/snapshots). */
export async function saveSnapshot(w: StageWorker, runDir: string, stage: number): Promise<void> {
  await writeSnapshot(
    runDir,
    w.appliedStep,
    stage,
    w.trainable.map((name) => ({ name, data: floatValues(w.stage.weights.get(name)!, w.stage) })),
  );
}

/**
 * A freshly loaded stage (base weights, step 0) moved to the newest snapshot of `stage` at a
 * step <= maxStep, when there is one; a corrupt snapshot is an error naming its file.
 */
export async function restoreSnapshot(
  w: StageWorker,
  runDir: string,
  stage: number,
  maxStep: number,
): Promise<StageWorker> {
  const step = (await snapshotSteps(runDir, stage)).find((s) => s <= maxStep);
  if (step === undefined) return w;
  const data = await readSnapshot(runDir, step, stage);
  for (const name of w.trainable) {
    const d = data.get(name);
    if (!d) throw new Error(`snapshot step ${step} stage ${stage}: ${name} is missing`);
    setValues(w.stage, name, d, `snapshot step ${step} stage ${stage}`);
  }
  w.appliedStep = step;
  return w;
}

/** One SHA-256 over the slice (its tensors' digests in name order): what a replica compares. */
export function sliceDigest(w: StageWorker): string {
  const d = stageDigests(w);
  return combineDigests([...d.keys()].sort().map((k) => d.get(k)!));
}

/**
 * SHA-256 of each tensor this stage holds, of its float32 values (HF layout: the same bytes as
 * a float32 export; half-stored weights are widened, which is exact).
 */
export function stageDigests(w: StageWorker): Map<string, string> {
  const out = new Map<string, string>();
  for (const [name, t] of w.stage.weights) out.set(name, tensorDigest(floatValues(t, w.stage)));
  return out;
}

/** The float32 values of a stored tensor: its own memory, or a widened copy of half bits. */
export function floatValues(t: Float32Array | Uint16Array, stage: Stage): Float32Array {
  if (t instanceof Float32Array) return t;
  const out = new Float32Array(t.length);
  widen(t, stage.dtype as "bfloat16" | "float16", out);
  return out;
}

/**
 * Sets a stored tensor to float32 values that came from it (a snapshot): exact for float32, and
 * for half storage, since the values are widened half values (checked: a value that is not one
 * is an error, as it would round).
 */
export function setValues(stage: Stage, name: string, values: Float32Array, what: string): void {
  const t = stage.weights.get(name);
  if (!t || t.length !== values.length) {
    throw new Error(`${what}: ${name} is of another size than the stage's`);
  }
  if (t instanceof Float32Array) {
    t.set(values);
    return;
  }
  const dtype = stage.dtype as "bfloat16" | "float16";
  const bits = new Uint16Array(values.length);
  narrowNearest(values, dtype, bits);
  const back = new Float32Array(values.length);
  widen(bits, dtype, back);
  for (let i = 0; i < values.length; i++) {
    if (back[i] !== values[i] && !(Number.isNaN(back[i]) && Number.isNaN(values[i]))) {
      throw new Error(`${what}: ${name}[${i}] = ${values[i]} is not a ${dtype} value`);
    }
  }
  t.set(bits);
}
