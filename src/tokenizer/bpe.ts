/**
 * Byte-pair encoding by merge rank (GPT-2 / HF `GPT2Tokenizer.bpe`): repeatedly merge the
 * adjacent pair with the lowest rank until no ranked pair is left. Results are cached per
 * pre-token, since natural text repeats words a lot.
 */

import { toByteLevel } from "./byte_level.ts";

/** Separator for pair keys; byte-level symbols never contain U+0000. */
const SEP = "\u0000";

/** Merge ranks keyed by `a + "\0" + b`. */
export function mergeRanks(merges: readonly (readonly [string, string])[]): Map<string, number> {
  const ranks = new Map<string, number>();
  merges.forEach(([a, b], i) => {
    const key = a + SEP + b;
    if (!ranks.has(key)) ranks.set(key, i);
  });
  return ranks;
}

/** Splits a byte-level `word` into its BPE symbols. */
export function bpeSymbols(word: string, ranks: ReadonlyMap<string, number>): string[] {
  const symbols = Array.from(word);
  if (symbols.length < 2) return symbols;
  while (symbols.length > 1) {
    let best = Infinity;
    let bestPair = "";
    for (let i = 0; i + 1 < symbols.length; i++) {
      const r = ranks.get(symbols[i] + SEP + symbols[i + 1]);
      if (r !== undefined && r < best) {
        best = r;
        bestPair = symbols[i] + SEP + symbols[i + 1];
      }
    }
    if (best === Infinity) break;
    // Merge every non-overlapping occurrence of the best pair, left to right (as HF does).
    let w = 0;
    for (let i = 0; i < symbols.length; i++) {
      if (i + 1 < symbols.length && symbols[i] + SEP + symbols[i + 1] === bestPair) {
        symbols[w++] = symbols[i] + symbols[i + 1];
        i++;
      } else {
        symbols[w++] = symbols[i];
      }
    }
    symbols.length = w;
  }
  return symbols;
}

/** Most words kept in a BPE cache before it is cleared (bounds memory on huge corpora). */
export const BPE_CACHE_LIMIT = 200_000;

/**
 * Returns `piece -> ids` for a raw pre-token (byte-level mapping + BPE + vocabulary lookup),
 * cached per piece. Symbols missing from `vocab` map to `unkId` (as the slow
 * HF tokenizer does; never happens with consistent vocab/merges files).
 */
export function cachedBpe(
  vocab: ReadonlyMap<string, number>,
  ranks: ReadonlyMap<string, number>,
  unkId: number,
): (piece: string) => readonly number[] {
  const cache = new Map<string, readonly number[]>();
  return (piece: string) => {
    let ids = cache.get(piece);
    if (ids === undefined) {
      ids = bpeSymbols(toByteLevel(piece), ranks).map((s) => vocab.get(s) ?? unkId);
      if (cache.size >= BPE_CACHE_LIMIT) cache.clear();
      cache.set(piece, ids);
    }
    return ids;
  };
}
