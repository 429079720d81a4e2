/**
 * The messages of a DP-ZO step between the coordinator and the stage workers (DESIGN.md, "The
 * step over NATS"). The same messages flow through the in-process transport (the embedded
 * default) and over NATS, where they are validated with these zod schemas and encoded with
 * msgpackr.
 *
 * Parameter sync per worker per step is three small control messages (begin, flip, update):
 * a seed and scalars, whatever the model size.
 */
import { z } from "zod";

export const PROTOCOL_VERSION = 1;

/** Every worker: theta += phi z(seed). */
export const StepBegin = z.object({
  type: z.literal("step.begin"),
  step: z.number().int().positive(),
  seed: z.string().regex(/^\d+$/),
  phi: z.number().positive(),
});
/** Every worker, after the + pass: theta -= 2 phi z(seed). */
export const StepFlip = z.object({
  type: z.literal("step.flip"),
  step: z.number().int().positive(),
});
/** Every worker: theta += coeff z(seed) (restore and update in one pass), optional decay. */
export const StepUpdate = z.object({
  type: z.literal("step.update"),
  step: z.number().int().positive(),
  coeff: z.number(),
  lr: z.number().nonnegative(),
  weight_decay: z.number().nonnegative(),
});
/** Every worker: undo the perturbation of a step that will not be released. */
export const StepAbort = z.object({
  type: z.literal("step.abort"),
  step: z.number().int().positive(),
});

export const ControlMessage = z.discriminatedUnion("type", [
  StepBegin,
  StepFlip,
  StepUpdate,
  StepAbort,
]);
export type ControlMessage = z.infer<typeof ControlMessage>;

/**
 * A micro-batch: right-padded token rows (B x S, flattened) and the (position, token) pairs to
 * score; pair k belongs to score `pairScore[k]`. `sign` is +1 / -1 for the two ZO passes and 0
 * for evaluation.
 */
export interface ForwardRequest {
  step: number;
  micro: number;
  sign: 1 | -1 | 0;
  batchSize: number;
  seqLen: number;
  ids: Int32Array;
  mask: Int32Array;
  pairPos: Int32Array;
  pairTok: Int32Array;
  pairScore: Int32Array;
  numScores: number;
}

/** Mean log-probability per score, from the last stage. */
export interface ForwardResult {
  step: number;
  micro: number;
  sign: 1 | -1 | 0;
  scores: Float32Array;
}
