/**
 * The coordinator of a DP-ZO run: owns the private data, the Poisson sampler, the noise, the
 * accountant, the ledger and the schedule. It never holds parameters; it talks to the stage
 * workers through a `Transport` (in-process or NATS) with the step protocol of DESIGN.md:
 *
 *   begin(step, seed, phi) -> + forward -> flip -> - forward -> clip, noise, ghat
 *   -> ledger append (durable) -> update(step, coeff = phi - lr * ghat)
 *
 * With K > 1 directions (DP-AggZO, `schedule.directions`) the + / - forwards run once per
 * direction (next moves to the next one), the K-vector is clipped and noised as one release
 * (privatizeDirections), and update carries the K coefficients.
 *
 * Faults (a worker lost, the server gone): a step interrupted before its ledger append released
 * nothing, so it is aborted — it spends no privacy and is not in the ledger — and, once the
 * transport has recovered (every slot back at the ledger's last step), retried: with the CSPRNG
 * it draws fresh secret randomness (safe: nothing of the attempt was released); with
 * `insecure_seed` its per-step stream draws the same batch, seed and noise as the uninterrupted
 * run, so the result is bit-identical. A step interrupted after its append is released: it is
 * completed from the ledger, never redrawn.
 */
import { type Transport, TransportFault } from "./transport/transport.ts";
import type { ForwardRequest } from "./protocol.ts";
import type { ExampleRequest } from "../src/tasks/task.ts";
import {
  argmax,
  candidateCrossEntropy,
  scoreCount,
  targetCrossEntropy,
} from "../src/tasks/task.ts";
import type { SecretRandom } from "../src/dpzo/randomness.ts";
import {
  finiteDifferences,
  poissonSample,
  type Privatization,
  privatize,
  privatizeDirections,
} from "../src/dpzo/mechanism.ts";
import { extraUpdateCoeff, type LedgerEntry, type LedgerSink } from "../src/checkpoint/ledger.ts";
import { RunInterrupted, throwIfStopped, unlessStopped } from "./interruption.ts";

/** Everything the coordinator decides a run by. */
export interface Schedule {
  steps: number;
  lr: number;
  phi: number;
  weightDecay: number;
  /** Directions per step, K (DP-AggZO); 1 (the default) is DP-ZO. */
  directions?: number;
  /** Poisson sampling rate q = expected batch size / n (of passages with context units). */
  q: number;
  privatization: Privatization;
  /** What one neighbour adds or removes (recorded in each private ledger entry). */
  unit?: "example" | "context";
  /**
   * Stop when a training loss is not finite (a decision on un-noised losses, which the privacy
   * statement declares). When false a non-finite g_i counts as 0 and every step is released.
   */
  stopOnLoss?: boolean;
  /** Examples per micro-batch sent down a pipeline. */
  microBatch: number;
  evalEvery: number;
  evalExamples?: number;
}

export interface StepMetrics {
  step: number;
  batch_size: number;
  loss_plus: number;
  loss_minus: number;
  ghat: number;
  clipped_fraction: number;
  mean_abs_g: number;
  /** Standard deviation of the noise in ghat: sigma * C / expected batch (Laplace: sqrt2 b C / E). */
  noise_std: number;
  step_s: number;
  /** Step time split: the two forward passes; the three perturbation passes (begin, flip,
   * update, acknowledged by every worker); the rest on the coordinator (sampling, noise,
   * waiting for the ledger append to be durable). */
  forward_s: number;
  perturb_s: number;
  wait_s: number;
}

export interface EvalMetrics {
  step: number;
  split: string;
  /** NaN for generation tasks. */
  accuracy: number;
  loss: number;
  /** Generation tasks: SQuAD F1 and exact match (NaN without an in-process model). */
  f1?: number;
  em?: number;
  examples: number;
}

export interface CoordinatorHooks {
  /** After each released step (ledger entry durable, update applied). */
  onStep?(m: StepMetrics, entry: LedgerEntry): void | Promise<void>;
  onEval?(m: EvalMetrics): void | Promise<void>;
}

/** Packs example requests into one right-padded micro-batch; returns the score owners. */
export function packRequests(
  examples: ExampleRequest[],
  seqLen: number,
  padId: number,
  step: number,
  micro: number,
  sign: 1 | -1 | 0,
): ForwardRequest {
  const rows = examples.flatMap((e) => e.rows);
  const B = rows.length, S = seqLen;
  const ids = new Int32Array(B * S).fill(padId), mask = new Int32Array(B * S);
  const pairPos: number[] = [], pairTok: number[] = [], pairScore: number[] = [];
  let score = 0;
  rows.forEach((row, b) => {
    ids.set(row.ids, b * S);
    mask.fill(1, b * S, b * S + row.ids.length);
    for (const s of row.scores) {
      s.positions.forEach((p, j) => {
        pairPos.push(b * S + p);
        pairTok.push(s.tokens[j]);
        pairScore.push(score);
      });
      score++;
    }
  });
  return {
    step,
    micro,
    sign,
    batchSize: B,
    seqLen: S,
    ids,
    mask,
    pairPos: Int32Array.from(pairPos),
    pairTok: Int32Array.from(pairTok),
    pairScore: Int32Array.from(pairScore),
    numScores: score,
  };
}

/** The padded length of a set of examples: their longest row. */
export function paddedLength(examples: ExampleRequest[]): number {
  let s = 1;
  for (const e of examples) for (const r of e.rows) s = Math.max(s, r.ids.length);
  return s;
}

/**
 * Runs the forward pass of `examples` over all replica groups and returns each example's
 * scores. The examples are cut into micro-batches of `microBatch` in order, each padded to its
 * own longest row, and micro-batch m goes to group m % groups. A micro-batch is therefore the
 * same (rows, order, padded length) whatever the number of groups or stages: with a native
 * matMul, whose last bits depend on the shape of the call and a row's place in it, that is
 * what keeps an example's loss, and so the run, bit-identical across topologies.
 */
export async function scoreExamples(
  transport: Transport,
  examples: ExampleRequest[],
  opts: { step: number; sign: 1 | -1 | 0; padId: number; microBatch: number },
): Promise<Float32Array[]> {
  const out: Float32Array[] = new Array(examples.length);
  const groups = transport.groups;
  const micros: number[][] = [];
  for (let start = 0; start < examples.length; start += opts.microBatch) {
    micros.push(
      Array.from(
        { length: Math.min(opts.microBatch, examples.length - start) },
        (_, j) => start + j,
      ),
    );
  }
  // Several micro-batches of a group in flight at once, so that the stages of a pipeline work
  // at the same time; each result lands at its examples' indices, so order does not matter.
  const depth = Math.max(1, transport.pipelineDepth ?? 1);
  const work: Promise<void>[] = [];
  for (let g = 0; g < groups; g++) {
    const mine = micros.map((_, m) => m).filter((m) => m % groups === g);
    let next = 0;
    const runner = async () => {
      while (next < mine.length) {
        const micro = mine[next++];
        const idx = micros[micro];
        const part = idx.map((i) => examples[i]);
        const req = packRequests(
          part,
          paddedLength(part),
          opts.padId,
          opts.step,
          micro,
          opts.sign,
        );
        const result = await transport.forward(g, req);
        let k = 0;
        for (const i of idx) {
          const n = scoreCount(examples[i]);
          out[i] = result.scores.slice(k, k + n);
          k += n;
        }
      }
    };
    for (let r = 0; r < Math.min(depth, mine.length); r++) work.push(runner());
  }
  await Promise.all(work);
  return out;
}

/** Accuracy and mean candidate cross-entropy of a classification split. */
export async function evaluate(
  transport: Transport,
  examples: ExampleRequest[],
  opts: { step: number; padId: number; microBatch: number },
): Promise<{ accuracy: number; loss: number }> {
  if (examples.length === 0) return { accuracy: NaN, loss: NaN };
  let correct = 0, loss = 0;
  for (let start = 0; start < examples.length; start += opts.microBatch * transport.groups) {
    const chunk = examples.slice(start, start + opts.microBatch * transport.groups);
    const scores = await scoreExamples(transport, chunk, { ...opts, sign: 0 });
    chunk.forEach((ex, i) => {
      if (argmax(scores[i]) === ex.label) correct++;
      loss += candidateCrossEntropy(scores[i], ex.label);
    });
  }
  return { accuracy: correct / examples.length, loss: loss / examples.length };
}

export type EvalResult = { accuracy: number; loss: number; f1?: number; em?: number };

/**
 * What a task tells the coordinator (src/tasks/mod.ts): the training loss of an example from
 * its scores, and how a split is evaluated.
 */
export interface CoordinatorTask {
  trainLoss(scores: ArrayLike<number>, ex: ExampleRequest): number;
  evaluate(
    transport: Transport,
    examples: ExampleRequest[],
    opts: { step: number; padId: number; microBatch: number },
  ): Promise<EvalResult>;
}

/** Classification (SST-2, QNLI): candidate cross-entropy; accuracy of the argmax. */
export const classificationTask: CoordinatorTask = {
  trainLoss: (scores, ex) => candidateCrossEntropy(scores, ex.label),
  evaluate,
};

/**
 * Generation (SQuAD, DROP): the loss is the mean cross-entropy of the target tokens (over any
 * transport); F1 and EM come from `generate`, greedy generation with the model in this process
 * (src/eval/generation.ts), when the run has one; otherwise they are NaN.
 */
export function generationTask(
  generate?: (examples: ExampleRequest[]) => { f1: number; em: number },
): CoordinatorTask {
  return {
    trainLoss: (scores) => targetCrossEntropy(scores),
    async evaluate(transport, examples, opts) {
      if (examples.length === 0) return { accuracy: NaN, loss: NaN, f1: NaN, em: NaN };
      let loss = 0;
      for (let start = 0; start < examples.length; start += opts.microBatch * transport.groups) {
        const chunk = examples.slice(start, start + opts.microBatch * transport.groups);
        const scores = await scoreExamples(transport, chunk, { ...opts, sign: 0 });
        chunk.forEach((_, i) => (loss += targetCrossEntropy(scores[i])));
      }
      const g = generate ? generate(examples) : { f1: NaN, em: NaN };
      return { accuracy: NaN, loss: loss / examples.length, f1: g.f1, em: g.em };
    },
  };
}

export interface TrainInputs {
  transport: Transport;
  schedule: Schedule;
  train: ExampleRequest[];
  /**
   * Privacy units of context runs: the training-example indices of each passage. Passages are
   * Poisson-sampled and each one's g_i summed before clipping. Default: every example a unit.
   */
  units?: number[][];
  val: ExampleRequest[];
  padId: number;
  /**
   * Secret randomness of a step (sampling, noise, the public step seed): the CSPRNG, or with
   * `insecure_seed` a stream keyed by the step so that a resumed or retried step redraws exactly.
   */
  rng: (step: number) => SecretRandom;
  ledger: LedgerSink;
  /**
   * The ledger so far (a resumed run starts after its last step); the coordinator appends every
   * released entry to it. Recovery brings the workers to its end.
   */
  entries?: LedgerEntry[];
  /** How often one step may be interrupted by faults before the run gives up (default 5). */
  maxRetries?: number;
  hooks?: CoordinatorHooks;
  log?: (line: string) => void;
  /** The task's loss and evaluation; classification (candidate cross-entropy) by default. */
  task?: CoordinatorTask;
  /**
   * Fires on Ctrl-C (cluster/interruption.ts): a step not yet in the ledger is dropped, one in
   * it completes, and the run throws RunInterrupted.
   */
  stop?: AbortSignal;
}

/** One DP-ZO step; returns its metrics and the released ledger entry. */
export async function trainStep(
  inp: TrainInputs,
  step: number,
): Promise<{ metrics: StepMetrics; entry: LedgerEntry }> {
  const { transport, schedule: s } = inp;
  // Until the ledger append nothing of this step is released: a stop drops it (step - 1 done).
  throwIfStopped(inp.stop, step - 1, s.steps);
  const unreleased = <T>(p: Promise<T>) => unlessStopped(p, inp.stop, step - 1, s.steps);
  const rng = inp.rng(step);
  const t0 = performance.now();
  const sampled = inp.units
    ? poissonSample(inp.units.length, s.q, rng).map((u) => inp.units![u])
    : poissonSample(inp.train.length, s.q, rng).map((i) => [i]);
  const batch = sampled.flat().map((i) => inp.train[i]);
  const seed = rng.u64();
  const common = { step, padId: inp.padId, microBatch: s.microBatch };
  const loss = (scores: Float32Array[]) =>
    Float64Array.from(batch, (ex, i) => (inp.task ?? classificationTask).trainLoss(scores[i], ex));

  let forwardMs = 0, perturbMs = 0;
  const timed = async <T>(f: () => Promise<T>, add: (ms: number) => void): Promise<T> => {
    const t = performance.now();
    const r = await f();
    add(performance.now() - t);
    return r;
  };
  const fwd = (ms: number) => (forwardMs += ms), pert = (ms: number) => (perturbMs += ms);
  // K > 1: the extra directions' seeds, drawn after the step seed (K = 1 draws as before).
  const K = s.directions ?? 1;
  const extraSeeds = Array.from({ length: K - 1 }, () => rng.u64());
  await timed(
    () =>
      unreleased(
        transport.broadcast({
          type: "step.begin",
          step,
          seed: seed.toString(),
          phi: s.phi,
          ...(K > 1 ? { extra_seeds: extraSeeds.map(String) } : {}),
        }),
      ),
    pert,
  );
  // One (+, -) pair of forwards per direction, in the order [...extra, seed].
  const plusAll: Float64Array[] = [], minusAll: Float64Array[] = [];
  for (let k = 0; k < K; k++) {
    if (k > 0) {
      await timed(() => unreleased(transport.broadcast({ type: "step.next", step })), pert);
    }
    plusAll.push(loss(
      await timed(() => unreleased(scoreExamples(transport, batch, { ...common, sign: 1 })), fwd),
    ));
    await timed(() => unreleased(transport.broadcast({ type: "step.flip", step })), pert);
    minusAll.push(loss(
      await timed(() => unreleased(scoreExamples(transport, batch, { ...common, sign: -1 })), fwd),
    ));
  }
  // The last direction (seed) is the ledger's top-level one; metrics report its losses.
  const plus = plusAll[K - 1], minus = minusAll[K - 1];

  const p = s.privatization;
  const stopOnLoss = !p.private || s.stopOnLoss !== false;
  const gAll = plusAll.map((pl, k) => {
    const g = finiteDifferences(pl, minusAll[k], s.phi);
    if (!stopOnLoss) g.forEach((v, i) => (g[i] = Number.isFinite(v) ? v : 0));
    return g;
  });
  const sizes = sampled.map((u) => u.length);
  const vec = K > 1 ? privatizeDirections(gAll, p, rng, sizes) : undefined;
  const est = vec
    ? {
      ghat: vec.ghats[K - 1],
      sumUnits: vec.sumUnits?.[K - 1],
      clippedFraction: vec.clippedFraction,
      meanAbsG: vec.meanAbsG,
    }
    : privatize(gAll[0], p, rng, sizes);
  if (!Number.isFinite(est.ghat) || (vec && !vec.ghats.every(Number.isFinite))) {
    // Only with stopOnLoss (or a non-private run): a decision on un-noised losses.
    await transport.broadcast({ type: "step.abort", step });
    const [lossPlus, lossMinus] = [mean(plus), mean(minus)];
    if (!Number.isFinite(lossPlus) || !Number.isFinite(lossMinus)) {
      // The weights overflowed before the run monitor saw the loss rise (src/report/warnings.ts
      // says the same when it does): the learning rate, not phi.
      throw new Error(
        `step ${step}: the training loss is ${lossPlus} / ${lossMinus} (L+ / L-): the weights ` +
          `overflowed, the learning rate train.lr = ${s.lr} is too large; lower train.lr ` +
          `(e.g. --set train.lr=${Number((s.lr / 10).toPrecision(3))}) and start a new run`,
      );
    }
    throw new Error(
      `step ${step}: the projected gradient is ${vec ? vec.ghats.join(", ") : est.ghat} ` +
        `(losses ${mean(plus)} / ${mean(minus)}); lower train.lr or train.phi`,
    );
  }
  // Only released values and public settings: no wall-clock time (it reveals batch sizes).
  const entry: LedgerEntry = {
    step,
    seed: seed.toString(),
    phi: s.phi,
    ghat: est.ghat,
    lr: s.lr,
    update_coeff: s.phi - s.lr * est.ghat,
    weight_decay: s.weightDecay,
    q: s.q,
    mechanism: p.private ? p.mechanism : "none",
    ...(p.private && p.mechanism === "gaussian" ? { sigma: p.noiseMultiplier } : {}),
    ...(p.private && p.mechanism === "laplace" ? { b: p.noiseMultiplier } : {}),
    ...(p.private
      ? {
        clip: p.clip,
        grid_units: p.gridUnits,
        sum_units: est.sumUnits,
        expected_batch: p.expectedBatchSize,
        unit: s.unit ?? "example",
      }
      : {}),
    ...(vec
      ? {
        extra_directions: extraSeeds.map((x, k) => ({
          seed: x.toString(),
          ghat: vec.ghats[k],
          ...(vec.sumUnits ? { sum_units: vec.sumUnits[k] } : {}),
          update_coeff: extraUpdateCoeff(s.lr, vec.ghats[k]),
        })),
      }
      : {}),
  };
  // Durable BEFORE release: the update (which reveals ghat) goes out only after the append.
  throwIfStopped(inp.stop, step - 1, s.steps);
  await inp.ledger.append(entry);
  inp.entries?.push(entry);
  // Released: a stop now leaves the step to the workers (or to the replay of a resume).
  await timed(() =>
    unlessStopped(
      transport.broadcast({
        type: "step.update",
        step,
        coeff: entry.update_coeff,
        lr: s.lr,
        weight_decay: s.weightDecay,
        ...(entry.extra_directions
          ? { extra_coeffs: entry.extra_directions.map((d) => d.update_coeff) }
          : {}),
      }),
      inp.stop,
      step,
      s.steps,
    ), pert);
  const stepMs = performance.now() - t0;
  return {
    entry,
    metrics: {
      step,
      batch_size: batch.length,
      loss_plus: mean(plus),
      loss_minus: mean(minus),
      ghat: est.ghat,
      clipped_fraction: est.clippedFraction,
      mean_abs_g: est.meanAbsG,
      noise_std: !p.private ? 0 : (p.mechanism === "gaussian" ? 1 : Math.SQRT2) *
        p.noiseMultiplier * p.clip / p.expectedBatchSize,
      step_s: stepMs / 1000,
      forward_s: forwardMs / 1000,
      perturb_s: perturbMs / 1000,
      wait_s: Math.max(0, stepMs - forwardMs - perturbMs) / 1000,
    },
  };
}

function mean(a: Float64Array): number {
  if (a.length === 0) return NaN;
  let s = 0;
  for (const v of a) s += v;
  return s / a.length;
}

/**
 * Runs the steps after the ledger's last (`entries`) .. schedule.steps with evaluation every `evalEvery` steps, and once
 * before the first step (the base model's figures, for comparison).
 */
export async function train(inp: TrainInputs): Promise<void> {
  const s = inp.schedule;
  const valSet = s.evalExamples ? inp.val.slice(0, s.evalExamples) : inp.val;
  const entries = inp.entries ?? (inp.entries = []);
  const log = inp.log ?? ((l: string) => console.error(l));
  const evalAt = async (step: number) => {
    const r = await afterRecovery(
      inp.transport,
      entries,
      () =>
        (inp.task ?? classificationTask).evaluate(inp.transport, valSet, {
          step,
          padId: inp.padId,
          microBatch: s.microBatch,
        }),
      `evaluation at step ${step}`,
      log,
    );
    await inp.hooks?.onEval?.({ step, split: "val", ...r, examples: valSet.length });
  };
  const first = entries.length + 1;
  if (s.evalEvery > 0 && first === 1 && valSet.length) await evalAt(0);
  for (let step = first; step <= s.steps; step++) {
    let result: Awaited<ReturnType<typeof trainStep>> | undefined;
    for (let attempt = 0; !result; attempt++) {
      try {
        result = await trainStep(inp, step);
      } catch (e) {
        if (!(e instanceof TransportFault) || !inp.transport.recover) throw e;
        if (inp.stop?.aborted) throw new RunInterrupted(entries.length, s.steps);
        if (attempt >= (inp.maxRetries ?? 5)) {
          throw new Error(`step ${step}: interrupted ${attempt + 1} times; last: ${e.message}`);
        }
        const released = entries.at(-1)?.step === step;
        log(
          `coordinator: step ${step} interrupted (${e.message}); ` +
            (released
              ? "it is in the ledger: the workers complete it"
              : "not released: aborted (no privacy spent), retried after recovery"),
        );
        await unlessStopped(inp.transport.recover(entries), inp.stop, entries.length, s.steps);
        if (released) {
          // Its metrics were lost with the interruption; the entry is what matters.
          await inp.hooks?.onStep?.(releasedMetrics(entries.at(-1)!), entries.at(-1)!);
          break;
        }
      }
    }
    if (result) await inp.hooks?.onStep?.(result.metrics, result.entry);
    const stopping = inp.stop?.aborted;
    if (
      s.evalEvery > 0 && step % s.evalEvery === 0 && step < s.steps && valSet.length && !stopping
    ) {
      await evalAt(step);
    }
  }
}

/**
 * `f()` (an evaluation, the final hashes: nothing released), made again after the transport
 * recovered when a fault interrupts it: every worker back at the ledger's last step.
 */
export async function afterRecovery<T>(
  transport: Transport,
  entries: readonly LedgerEntry[],
  f: () => Promise<T>,
  what: string,
  log: (line: string) => void,
  maxRetries = 5,
): Promise<T> {
  for (let attempt = 0;; attempt++) {
    try {
      return await f();
    } catch (e) {
      if (!(e instanceof TransportFault) || !transport.recover || attempt >= maxRetries) throw e;
      log(`coordinator: ${what} interrupted (${e.message}); made again after recovery`);
      await transport.recover(entries);
    }
  }
}

/** Metrics of a step released before an interruption: only what its ledger entry says. */
function releasedMetrics(e: LedgerEntry): StepMetrics {
  return {
    step: e.step,
    batch_size: NaN,
    loss_plus: NaN,
    loss_minus: NaN,
    ghat: e.ghat,
    clipped_fraction: NaN,
    mean_abs_g: NaN,
    noise_std: NaN,
    step_s: NaN,
    forward_s: NaN,
    perturb_s: NaN,
    wait_s: NaN,
  };
}
