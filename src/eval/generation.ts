/**
 * Evaluation of generation tasks (SQuAD, DROP) as MeZO does it: greedy decoding of at most 50
 * new tokens with the KV cache, stopping at a token that holds a newline or at EOS; the text
 * before the first newline, trimmed, is the prediction, scored with SQuAD-normalised F1 and
 * exact match against every gold answer (the best counts).
 */
import type { Stage } from "../model/opt.ts";
import { generateGreedy } from "../model/generate.ts";
import type { Tokenizer } from "../tokenizer/mod.ts";
import type { ExampleRequest } from "../tasks/task.ts";
import { type GenerationScore, scoreAnswers } from "./squad_metrics.ts";

export const MAX_NEW_TOKENS = 50;

export interface GenerationEvalOptions {
  maxNewTokens?: number;
  /** Prompts per generation batch (left padded; prompts are sorted by length first). */
  batchSize?: number;
  useCache?: boolean;
}

/** True for EOS and for every token whose text holds a newline (cached per id). */
export function newlineOrEos(tok: Tokenizer): (id: number) => boolean {
  const memo = new Map<number, boolean>();
  return (id) => {
    let v = memo.get(id);
    if (v === undefined) {
      v = id === tok.eosId || tok.decode([id]).includes("\n");
      memo.set(id, v);
    }
    return v;
  };
}

/** The prediction of generated tokens: decoded, cut at the first newline, trimmed. */
export function predictionText(tok: Tokenizer, ids: number[]): string {
  return tok.decode(ids, { skipSpecialTokens: true }).split("\n")[0].trim();
}

/** Generates an answer for each example and scores them; also returns the predictions. */
export function evaluateGeneration(
  pipeline: Stage | Stage[],
  tok: Tokenizer,
  examples: ExampleRequest[],
  opts: GenerationEvalOptions = {},
): GenerationScore & { predictions: string[] } {
  const maxNewTokens = opts.maxNewTokens ?? MAX_NEW_TOKENS;
  const batchSize = opts.batchSize ?? 8;
  const gens = examples.map((e, i) => {
    if (!e.generation) throw new Error(`example ${i + 1} is not a generation example`);
    return e.generation;
  });
  const order = gens.map((_, i) => i).sort((a, b) =>
    gens[a].prompt.length - gens[b].prompt.length || a - b
  );
  const predictions = new Array<string>(examples.length);
  const isStop = newlineOrEos(tok);
  for (let start = 0; start < order.length; start += batchSize) {
    const idx = order.slice(start, start + batchSize);
    const out = generateGreedy(pipeline, idx.map((i) => gens[i].prompt), {
      maxNewTokens,
      isStop,
      useCache: opts.useCache,
    });
    idx.forEach((i, k) => (predictions[i] = predictionText(tok, out[k])));
  }
  return { ...scoreAnswers(predictions, gens.map((g) => g.answers)), predictions };
}
