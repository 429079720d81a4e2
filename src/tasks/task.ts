/**
 * What a task hands the trainer: for each example, the token rows to run and the
 * (position, token) pairs whose log-probabilities make its loss or its prediction.
 *
 * A *score* is the mean log-probability of some tokens at some positions of one row (a
 * candidate answer's length-normalised log-likelihood, as MeZO uses). The last pipeline stage
 * returns one number per score, so workers stay task-agnostic; the coordinator turns scores
 * into losses and predictions.
 */

export interface Score {
  /** Row-local positions whose next-token distribution is read. */
  positions: number[];
  /** The token read at each position. */
  tokens: number[];
}

export interface ScoreRow {
  ids: number[];
  scores: Score[];
}

export interface ExampleRequest {
  rows: ScoreRow[];
  /** Index of the correct candidate (classification; 0 for generation). */
  label: number;
  /**
   * Generation tasks: the prompt to generate from (token ids, BOS first) and the gold answers.
   * Its one row is prompt + target; its one score reads the target tokens.
   */
  generation?: { prompt: number[]; answers: string[] };
  /**
   * SQuAD, DROP: the passage the question is about. Examples with the same passage are one
   * privacy unit under `privacy.unit: context` (src/dpzo/privacy_units.ts).
   */
  passage?: string;
}

/** The tasks dpzo runs (the paper's: SST-2, QNLI, SQuAD, DROP). */
export const TASK_NAMES = ["sst2", "qnli", "squad", "drop"] as const;
export type TaskName = (typeof TASK_NAMES)[number];

/** Keeps at most `maxLength` tokens, dropping from the left but keeping BOS (as MeZO). */
export function truncateLeft(ids: number[], maxLength: number): number[] {
  if (ids.length <= maxLength) return ids;
  return [ids[0], ...ids.slice(ids.length - maxLength + 1)];
}

/**
 * A classification request: the prompt followed by each candidate. When every candidate is a
 * single token, one row serves them all (their scores read the same position).
 */
export function classificationRequest(
  prompt: number[],
  candidates: number[][],
  label: number,
  maxLength: number,
): ExampleRequest {
  if (candidates.every((c) => c.length === 1)) {
    const ids = truncateLeft(prompt, maxLength);
    const last = ids.length - 1;
    return {
      rows: [{ ids, scores: candidates.map((c) => ({ positions: [last], tokens: c })) }],
      label,
    };
  }
  const rows = candidates.map((cand) => {
    const ids = truncateLeft([...prompt, ...cand], maxLength);
    const start = ids.length - cand.length;
    return {
      ids,
      scores: [{ positions: cand.map((_, j) => start + j - 1), tokens: cand }],
    };
  });
  return { rows, label };
}

/**
 * A generation request: one row, prompt + target (truncated from the left with BOS kept), whose
 * one score is the mean log-probability of the target tokens (teacher forcing); the training
 * loss is its negative, the mean cross-entropy over the target tokens.
 */
export function generationRequest(
  prompt: number[],
  target: number[],
  answers: string[],
  maxLength: number,
): ExampleRequest {
  if (target.length === 0 || target.length >= maxLength) {
    throw new Error(
      `a target of ${target.length} tokens does not fit task.max_length ${maxLength}`,
    );
  }
  const ids = truncateLeft([...prompt, ...target], maxLength);
  const start = ids.length - target.length;
  return {
    rows: [{ ids, scores: [{ positions: target.map((_, j) => start + j - 1), tokens: target }] }],
    label: 0,
    generation: { prompt: truncateLeft(prompt, maxLength), answers },
  };
}

/** A generation example's training loss: mean cross-entropy over its target tokens. */
export function targetCrossEntropy(scores: ArrayLike<number>): number {
  return -scores[0];
}

/** Scores of one example, in row order then score order. */
export function scoreCount(req: ExampleRequest): number {
  return req.rows.reduce((n, r) => n + r.scores.length, 0);
}

/** MeZO's train-as-classification loss: cross-entropy over the candidates' scores. */
export function candidateCrossEntropy(scores: ArrayLike<number>, label: number): number {
  let max = -Infinity;
  for (let i = 0; i < scores.length; i++) max = Math.max(max, scores[i]);
  let sum = 0;
  for (let i = 0; i < scores.length; i++) sum += Math.exp(scores[i] - max);
  return max + Math.log(sum) - scores[label];
}

export function argmax(scores: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < scores.length; i++) if (scores[i] > scores[best]) best = i;
  return best;
}
