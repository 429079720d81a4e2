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
  /** Index of the correct candidate (classification). */
  label: number;
}

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
