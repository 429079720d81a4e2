/**
 * SQuAD v1.1 and DROP as generation tasks (MeZO's prompts):
 *
 *   SQuAD: Title: {title}\nContext: {context}\nQuestion: {question}\nAnswer:
 *   DROP:  Passage: {passage}\nQuestion: {question}\nAnswer:
 *
 * with the target ` {answer}\n` (the first gold answer). Training loss: mean cross-entropy over
 * the target tokens, trailing newline included. Evaluation: greedy generation of at most 50 new
 * tokens, stopping at a newline or EOS, scored with SQuAD-normalised F1 and exact match, the
 * best over the gold answers (src/eval/generation.ts).
 */
import type { Tokenizer } from "../tokenizer/mod.ts";
import type { SquadExample } from "../data/squad.ts";
import type { DropExample } from "../data/drop.ts";
import { type ExampleRequest, generationRequest } from "./task.ts";

export const SQUAD_TEMPLATE =
  "Title: {title}\\nContext: {context}\\nQuestion: {question}\\nAnswer:";
export const DROP_TEMPLATE = "Passage: {passage}\\nQuestion: {question}\\nAnswer:";
export const ANSWER_TARGET = " {answer}\\n";

export function squadPrompt(ex: SquadExample): string {
  return `Title: ${ex.title}\nContext: ${ex.context}\nQuestion: ${ex.question}\nAnswer:`;
}

export function dropPrompt(ex: DropExample): string {
  return `Passage: ${ex.passage}\nQuestion: ${ex.question}\nAnswer:`;
}

function answerRequest(
  prompt: string,
  answers: string[],
  tok: Tokenizer,
  maxLength: number,
): ExampleRequest {
  const target = tok.encode(` ${answers[0].trim()}\n`, { addBos: false });
  return generationRequest(tok.encode(prompt), target, answers, maxLength);
}

export function squadRequest(ex: SquadExample, tok: Tokenizer, maxLength: number): ExampleRequest {
  return { ...answerRequest(squadPrompt(ex), ex.answers, tok, maxLength), passage: ex.context };
}

export function dropRequest(ex: DropExample, tok: Tokenizer, maxLength: number): ExampleRequest {
  return { ...answerRequest(dropPrompt(ex), ex.answers, tok, maxLength), passage: ex.passage };
}
