/**
 * Answer scoring as the official SQuAD v1.1 evaluation script (`evaluate-v1.1.py`) does it, and
 * as MeZO scores SQuAD and DROP: normalise both strings (lower case, drop punctuation, drop the
 * articles a/an/the, collapse whitespace), then exact match and bag-of-tokens F1, each the
 * maximum over the gold answers.
 *
 * Rules pinned from the script:
 * - normalisation order: lower -> remove punctuation (Python's `string.punctuation`, every
 *   character removed, not replaced by a space) -> remove `\b(a|an|the)\b` (replaced by a
 *   space) -> `' '.join(text.split())`;
 * - F1 counts common tokens with multiplicity (Counter intersection); no common token gives 0,
 *   including when both sides normalise to nothing (v1.1; v2.0 changed that case);
 * - a question's score is the max over its gold answers; a split's is the mean.
 */

/** Python's `string.punctuation`. */
const PUNCTUATION = new Set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~");
/** `\b(a|an|the)\b` with Python's Unicode word characters (letters, digits, underscore). */
const ARTICLES = /(?<![\p{L}\p{N}_])(?:a|an|the)(?![\p{L}\p{N}_])/gu;

export function normalizeAnswer(s: string): string {
  let out = "";
  for (const ch of s.toLowerCase()) if (!PUNCTUATION.has(ch)) out += ch;
  out = out.replace(ARTICLES, " ");
  return out.split(/\s+/u).filter((t) => t !== "").join(" ");
}

function tokens(s: string): string[] {
  const n = normalizeAnswer(s);
  return n === "" ? [] : n.split(" ");
}

export function exactMatch(prediction: string, truth: string): number {
  return normalizeAnswer(prediction) === normalizeAnswer(truth) ? 1 : 0;
}

export function f1Score(prediction: string, truth: string): number {
  const p = tokens(prediction), g = tokens(truth);
  const counts = new Map<string, number>();
  for (const t of g) counts.set(t, (counts.get(t) ?? 0) + 1);
  let same = 0;
  for (const t of p) {
    const c = counts.get(t) ?? 0;
    if (c > 0) {
      same++;
      counts.set(t, c - 1);
    }
  }
  if (same === 0) return 0;
  const precision = same / p.length, recall = same / g.length;
  return (2 * precision * recall) / (precision + recall);
}

/** `metric_max_over_ground_truths`: the best score over the gold answers. */
export function maxOverAnswers(
  metric: (prediction: string, truth: string) => number,
  prediction: string,
  answers: readonly string[],
): number {
  if (answers.length === 0) throw new Error("an example needs at least one gold answer");
  let best = 0;
  for (const a of answers) best = Math.max(best, metric(prediction, a));
  return best;
}

export interface GenerationScore {
  /** Mean token F1 (0..1). */
  f1: number;
  /** Mean exact match (0..1). */
  em: number;
}

/** Mean F1 and EM of predictions against their gold answer lists. */
export function scoreAnswers(
  predictions: readonly string[],
  answers: readonly (readonly string[])[],
): GenerationScore {
  if (predictions.length !== answers.length) throw new Error("one prediction per example");
  if (predictions.length === 0) return { f1: NaN, em: NaN };
  let f1 = 0, em = 0;
  predictions.forEach((p, i) => {
    f1 += maxOverAnswers(f1Score, p, answers[i]);
    em += maxOverAnswers(exactMatch, p, answers[i]);
  });
  return { f1: f1 / predictions.length, em: em / predictions.length };
}
