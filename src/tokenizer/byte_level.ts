/**
 * GPT-2's byte-level mapping: every byte 0..255 gets a printable Unicode character (printable
 * Latin-1 bytes map to themselves, the rest to U+0100 upwards, so a space is `Ġ`). Text is
 * UTF-8 encoded and mapped through this table before BPE; decoding inverts it.
 */

/** `BYTE_TO_CHAR[b]` is the character GPT-2 uses for byte `b`. */
export const BYTE_TO_CHAR: readonly string[] = buildByteToChar();

/** Inverse of {@link BYTE_TO_CHAR}: character code -> byte. */
export const CHAR_TO_BYTE: ReadonlyMap<string, number> = new Map(
  BYTE_TO_CHAR.map((c, b) => [c, b]),
);

function buildByteToChar(): string[] {
  const table: string[] = new Array(256);
  const printable = (b: number) =>
    (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  let next = 0;
  for (let b = 0; b < 256; b++) {
    table[b] = printable(b) ? String.fromCharCode(b) : String.fromCharCode(256 + next++);
  }
  return table;
}

const encoder = new TextEncoder();

/** UTF-8 encodes `piece` and maps each byte to its GPT-2 character. */
export function toByteLevel(piece: string): string {
  const bytes = encoder.encode(piece);
  let out = "";
  for (let i = 0; i < bytes.length; i++) out += BYTE_TO_CHAR[bytes[i]];
  return out;
}

/**
 * Maps byte-level characters back to bytes and decodes them as UTF-8; invalid sequences become
 * U+FFFD (Python's `errors="replace"`, as HF's GPT2Tokenizer does). Characters outside the
 * table (e.g. in hand-added tokens) are kept as their own UTF-8 bytes.
 */
export function fromByteLevel(text: string): string {
  const bytes: number[] = [];
  for (const ch of text) {
    const b = CHAR_TO_BYTE.get(ch);
    if (b !== undefined) bytes.push(b);
    else bytes.push(...encoder.encode(ch));
  }
  return new TextDecoder("utf-8", { fatal: false, ignoreBOM: true }).decode(
    new Uint8Array(bytes),
  );
}
