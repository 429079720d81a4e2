/**
 * Scoring texts with a model: for each text its token ids, the mean next-token cross-entropy
 * (nats) over its targets, and the most likely next token after its last token. Used by
 * `dpzo score`, the quickest check that a checkpoint and tokenizer load and agree with
 * Hugging Face.
 */
import * as tf from "@tensorflow/tfjs-core";
import {
  crossEntropyAt,
  logitsAt,
  meanPerRow,
  nextTokenTargets,
  padBatch,
  type Stage,
  stageForward,
} from "../model/opt.ts";

export interface TextScore {
  ids: number[];
  /** Mean next-token cross-entropy in nats; null for a text of one token (no target). */
  loss: number | null;
  /** Argmax token id after the last token. */
  nextToken: number;
}

/** Scores tokenized texts in batches of `batchSize` (right padding). */
export function scoreSequences(stage: Stage, sequences: number[][], batchSize = 8): TextScore[] {
  if (!stage.range.embeddings || !stage.range.head) {
    throw new Error("scoreSequences needs the whole model in one stage");
  }
  const maxLen = stage.config.maxPositions;
  const results: TextScore[] = [];
  for (let start = 0; start < sequences.length; start += batchSize) {
    const chunk = sequences.slice(start, start + batchSize);
    for (const [i, ids] of chunk.entries()) {
      if (ids.length > maxLen) {
        throw new Error(
          `text ${start + i + 1} has ${ids.length} tokens; the model takes at most ${maxLen}`,
        );
      }
    }
    const batch = padBatch(chunk, stage.config.padTokenId);
    const features = stageForward(stage, batch);
    const { positions, targets, row } = nextTokenTargets(batch);
    const losses = positions.length
      ? meanPerRow(crossEntropyAt(stage, features, positions, targets), row, chunk.length)
      : new Float32Array(chunk.length).fill(NaN);
    const last = Int32Array.from(chunk, (ids, b) => b * batch.seqLen + ids.length - 1);
    const next = tf.tidy(() => tf.argMax(logitsAt(stage, features, last), 1).dataSync());
    features.dispose();
    chunk.forEach((ids, b) =>
      results.push({
        ids,
        loss: Number.isNaN(losses[b]) ? null : losses[b],
        nextToken: next[b],
      })
    );
  }
  return results;
}
