/**
 * Pre-tokenization as HF's slow GPT2Tokenizer does it: split the text on special tokens, then
 * split each remaining span with GPT-2's regex under Python `regex` semantics.
 *
 * Python's `regex` module defines `\s` as the Unicode White_Space property: it includes U+0085
 * and excludes U+FEFF (JavaScript's `\s` is the opposite), and — unlike `str.isspace()` — it
 * does NOT include the separators U+001C..U+001F (checked against `regex` 2026.5.9 over every
 * code point). `str.strip()`, used around special tokens, does use `str.isspace()`, so both sets
 * are defined here.
 */

/** Python `regex` `\s` (Unicode White_Space), as a class body for a `u`-flag RegExp. */
export const PY_REGEX_WS = "\\t\\n\\v\\f\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029" +
  "\\u202f\\u205f\\u3000";

/** Python `str.isspace()`: White_Space plus U+001C..U+001F. */
export const PY_ISSPACE = PY_REGEX_WS + "\\x1c-\\x1f";

/** GPT-2's pattern with `\s`/`\S` spelled out as {@link PY_REGEX_WS}. */
export const GPT2_PATTERN = new RegExp(
  [
    "'s|'t|'re|'ve|'m|'ll|'d",
    " ?\\p{L}+",
    " ?\\p{N}+",
    ` ?[^${PY_REGEX_WS}\\p{L}\\p{N}]+`,
    `[${PY_REGEX_WS}]+(?![^${PY_REGEX_WS}])`,
    `[${PY_REGEX_WS}]+`,
  ].join("|"),
  "gu",
);

/** Splits `text` into GPT-2 pre-tokens (pieces that BPE then works on independently). */
export function gpt2Split(text: string): string[] {
  return text.match(GPT2_PATTERN) ?? [];
}

const LEADING_SPACE = new RegExp(`^[${PY_ISSPACE}]+`, "u");
const TRAILING_SPACE = new RegExp(`[${PY_ISSPACE}]+$`, "u");

/** Python `str.lstrip()`. */
export function pyLstrip(s: string): string {
  return s.replace(LEADING_SPACE, "");
}

/** Python `str.rstrip()`. */
export function pyRstrip(s: string): string {
  return s.replace(TRAILING_SPACE, "");
}

/** A token that is split out of raw text; `lstrip`/`rstrip` eat whitespace beside it. */
export interface SplitToken {
  content: string;
  lstrip: boolean;
  rstrip: boolean;
}

/** One span of text: either a special token (by content) or ordinary text. */
export type Span = { special: true; content: string } | { special: false; text: string };

/** Builds a splitter for `tokens` (longest match first), or `null` when there are none. */
export function specialSplitter(tokens: readonly SplitToken[]): ((text: string) => Span[]) | null {
  const byContent = new Map<string, SplitToken>();
  for (const t of tokens) if (t.content !== "") byContent.set(t.content, t);
  if (byContent.size === 0) return null;
  const alternatives = [...byContent.keys()]
    .sort((a, b) => b.length - a.length)
    .map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  const re = new RegExp(alternatives.join("|"), "gu");

  return (text: string): Span[] => {
    // Same steps as transformers 4.28 `tokenize`: split, strip neighbours, drop empty texts.
    const parts: (Span & { tok?: SplitToken })[] = [];
    let last = 0;
    for (const m of text.matchAll(re)) {
      parts.push({ special: false, text: text.slice(last, m.index) });
      parts.push({ special: true, content: m[0], tok: byContent.get(m[0]) });
      last = m.index + m[0].length;
    }
    parts.push({ special: false, text: text.slice(last) });
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i];
      if (!p.special || !p.tok) continue;
      const left = parts[i - 1];
      const right = parts[i + 1];
      if (p.tok.rstrip && right && !right.special) right.text = pyLstrip(right.text);
      if (p.tok.lstrip && left && !left.special) left.text = pyRstrip(left.text);
    }
    return parts
      .filter((p) => p.special || p.text !== "")
      .map((p) => p.special ? { special: true, content: p.content } : p);
  };
}
