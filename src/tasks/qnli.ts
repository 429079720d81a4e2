/**
 * QNLI as a MeZO-style prompt for decoder models (an RTE-like template; MeZO has no QNLI
 * template of its own):
 *
 *   {sentence}\nDoes this sentence answer the question "{question}"? Yes or No?
 *
 * followed by the candidate ` Yes` (label 0, entailment) or ` No` (label 1, not_entailment).
 * Training loss: cross-entropy over the two candidates' length-normalised log-probabilities;
 * evaluation: accuracy of the argmax.
 */
import type { Tokenizer } from "../tokenizer/mod.ts";
import type { QnliExample } from "../data/qnli.ts";
import { classificationRequest, type ExampleRequest } from "./task.ts";

export const QNLI_TEMPLATE =
  '{sentence}\\nDoes this sentence answer the question "{question}"? Yes or No?';
export const QNLI_VERBALIZER = [" Yes", " No"] as const;

export function qnliPrompt(ex: QnliExample): string {
  return `${ex.sentence.trim()}\nDoes this sentence answer the question "${ex.question.trim()}"? ` +
    "Yes or No?";
}

export function qnliRequest(ex: QnliExample, tok: Tokenizer, maxLength: number): ExampleRequest {
  const candidates = QNLI_VERBALIZER.map((w) => tok.encode(w, { addBos: false }));
  return classificationRequest(tok.encode(qnliPrompt(ex)), candidates, ex.label, maxLength);
}
