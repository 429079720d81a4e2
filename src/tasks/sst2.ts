/**
 * SST-2 as MeZO prompts it for decoder models: `<sentence> It was` followed by the candidate
 * ` terrible` (label 0) or ` great` (label 1). Training loss: cross-entropy over the two
 * candidates' length-normalised log-probabilities; evaluation: accuracy of the argmax.
 */
import type { Tokenizer } from "../tokenizer/mod.ts";
import type { Sst2Example } from "../data/sst2.ts";
import { classificationRequest, type ExampleRequest } from "./task.ts";

export const SST2_TEMPLATE = "{sentence} It was";
export const SST2_VERBALIZER = [" terrible", " great"] as const;

export function sst2Request(ex: Sst2Example, tok: Tokenizer, maxLength: number): ExampleRequest {
  const prompt = tok.encode(`${ex.sentence.trim()} It was`);
  const candidates = SST2_VERBALIZER.map((w) => tok.encode(w, { addBos: false }));
  return classificationRequest(prompt, candidates, ex.label, maxLength);
}
