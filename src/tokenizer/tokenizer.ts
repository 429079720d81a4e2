/**
 * The OPT tokenizer: GPT-2 byte-level BPE with `</s>` prepended as BOS, reproducing HF's slow
 * `GPT2Tokenizer` (transformers 4.28) id for id, including special tokens written in raw text.
 */

import { fromByteLevel } from "./byte_level.ts";
import { cachedBpe, mergeRanks } from "./bpe.ts";
import { readTokenizerFiles, type SpecialToken, type TokenizerFiles } from "./files.ts";
import { gpt2Split, specialSplitter } from "./pretokenize.ts";

/** Options fixed when the tokenizer is built. */
export interface TokenizerOptions {
  /**
   * Split the special tokens (`</s>`, `<pad>` for OPT) out of raw text as HF's slow tokenizer
   * does. When false they are encoded as ordinary text. Default true. `encode` can override it.
   */
  splitSpecialTokens?: boolean;
}

export interface EncodeOptions {
  /** Prepend BOS (`</s>`, id 2). Default: `add_bos_token` of tokenizer_config.json (OPT: true). */
  addBos?: boolean;
  /** Overrides {@link TokenizerOptions.splitSpecialTokens} for this call. */
  splitSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Drop the special tokens' ids (bos, eos, unk, pad, ...). Default false. */
  skipSpecialTokens?: boolean;
}

export interface Tokenizer {
  encode(text: string, opts?: EncodeOptions): number[];
  /** Inverts the byte-level encoding; ids without a token (e.g. 50265..50271) give nothing. */
  decode(ids: number[], opts?: DecodeOptions): string;
  bosId: number;
  eosId: number;
  padId: number;
  unkId: number;
  /** Size of the tokenizer's id space (largest id + 1; 50265 for OPT, less than the model's). */
  vocabSize: number;
  tokenToId(t: string): number | undefined;
  idToToken(id: number): string | undefined;
}

/** Loads the tokenizer of the OPT model directory `modelDir`. */
export async function loadTokenizer(
  modelDir: string,
  opts: TokenizerOptions = {},
): Promise<Tokenizer> {
  return createTokenizer(await readTokenizerFiles(modelDir), opts);
}

/** Builds a tokenizer from already loaded files. */
export function createTokenizer(files: TokenizerFiles, opts: TokenizerOptions = {}): Tokenizer {
  const vocab = new Map(files.vocab);
  // As HF does on init: special tokens missing from the vocabulary get the next free ids.
  let nextId = 0;
  for (const id of vocab.values()) if (id >= nextId) nextId = id + 1;
  const specials: SpecialToken[] = [
    files.bos,
    files.eos,
    files.unk,
    files.pad,
    ...files.extraSpecial,
  ];
  for (const t of specials) if (!vocab.has(t.content)) vocab.set(t.content, nextId++);

  const idToToken: string[] = new Array(nextId);
  for (const [tok, id] of vocab) idToToken[id] = tok;
  const vocabSize = idToToken.length;

  const bosId = vocab.get(files.bos.content)!;
  const eosId = vocab.get(files.eos.content)!;
  const unkId = vocab.get(files.unk.content)!;
  const padId = vocab.get(files.pad.content)!;
  const specialIds = new Set(specials.map((t) => vocab.get(t.content)!));

  const bpe = cachedBpe(vocab, mergeRanks(files.merges), unkId);
  const split = specialSplitter(specials);
  const splitDefault = opts.splitSpecialTokens ?? true;

  function encodeText(text: string, out: number[]): void {
    for (const piece of gpt2Split(text)) {
      for (const id of bpe(piece)) out.push(id);
    }
  }

  return {
    encode(text: string, encodeOpts: EncodeOptions = {}): number[] {
      const out: number[] = [];
      if (encodeOpts.addBos ?? files.addBosToken) out.push(bosId);
      if (files.addPrefixSpace) text = " " + text;
      if (split && (encodeOpts.splitSpecialTokens ?? splitDefault)) {
        for (const span of split(text)) {
          if (span.special) out.push(vocab.get(span.content)!);
          else encodeText(span.text, out);
        }
      } else {
        encodeText(text, out);
      }
      return out;
    },

    decode(ids: number[], decodeOpts: DecodeOptions = {}): string {
      let text = "";
      for (const id of ids) {
        if (decodeOpts.skipSpecialTokens && specialIds.has(id)) continue;
        text += idToToken[id] ?? "";
      }
      return fromByteLevel(text);
    },

    bosId,
    eosId,
    padId,
    unkId,
    vocabSize,
    tokenToId: (t: string) => vocab.get(t),
    idToToken: (id: number) => idToToken[id],
  };
}
