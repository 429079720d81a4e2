/**
 * Reads and validates the tokenizer files of a Hugging Face OPT model directory: `vocab.json` +
 * `merges.txt` (or `tokenizer.json`), plus `tokenizer_config.json` / `special_tokens_map.json`
 * for the special tokens. Every problem becomes one error line naming the file and the fix.
 */

import { z } from "zod";

/** One special token as configured: its text and whether it eats whitespace beside it. */
export interface SpecialToken {
  content: string;
  lstrip: boolean;
  rstrip: boolean;
}

/** Everything needed to build a tokenizer, independent of where it came from. */
export interface TokenizerFiles {
  vocab: Map<string, number>;
  merges: [string, string][];
  bos: SpecialToken;
  eos: SpecialToken;
  unk: SpecialToken;
  pad: SpecialToken;
  /** Other tokens split out of raw text (additional special tokens, tokenizer.json added tokens). */
  extraSpecial: SpecialToken[];
  addBosToken: boolean;
  addPrefixSpace: boolean;
}

/** OPT's settings (facebook/opt-*), used for whatever the config files leave out. */
export const OPT_DEFAULTS = {
  bos: "</s>",
  eos: "</s>",
  unk: "</s>",
  pad: "<pad>",
  addBosToken: true,
  addPrefixSpace: false,
} as const;

const VocabSchema = z.record(z.string(), z.number().int().nonnegative());

/** A special token in HF config files: a plain string, an AddedToken object, or null. */
const TokenSchema = z.union([
  z.string(),
  z.object({
    content: z.string(),
    lstrip: z.boolean().optional(),
    rstrip: z.boolean().optional(),
  }),
  z.null(),
]);

const SpecialsSchema = z.object({
  bos_token: TokenSchema.optional(),
  eos_token: TokenSchema.optional(),
  unk_token: TokenSchema.optional(),
  pad_token: TokenSchema.optional(),
  sep_token: TokenSchema.optional(),
  cls_token: TokenSchema.optional(),
  mask_token: TokenSchema.optional(),
  additional_special_tokens: z.array(TokenSchema).optional(),
});

const TokenizerConfigSchema = SpecialsSchema.extend({
  add_bos_token: z.boolean().optional(),
  add_prefix_space: z.boolean().optional(),
});

const TokenizerJsonSchema = z.object({
  model: z.object({
    type: z.literal("BPE").optional(),
    vocab: VocabSchema,
    merges: z.array(z.union([z.string(), z.tuple([z.string(), z.string()])])),
  }),
  added_tokens: z.array(z.object({
    id: z.number().int().nonnegative(),
    content: z.string(),
    special: z.boolean().optional(),
    lstrip: z.boolean().optional(),
    rstrip: z.boolean().optional(),
  })).optional(),
});

type Specials = z.infer<typeof SpecialsSchema>;

const NEEDS = "an OPT model directory needs vocab.json and merges.txt (or tokenizer.json)";

function joinPath(dir: string, name: string): string {
  return `${dir.replace(/[\/\\]+$/, "")}/${name}`;
}

/** Reads a text file; `undefined` when it does not exist. */
async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw new Error(`${path}: cannot be read (${(e as Error).message}); check its permissions`);
  }
}

function issueLine(error: z.ZodError): string {
  const issue = error.issues[0];
  const segment = (k: PropertyKey) =>
    typeof k === "string" && !/^[\w$]+$/.test(k) ? JSON.stringify(k) : String(k);
  const where = issue.path.length ? `at ${issue.path.map(segment).join(".")}: ` : "";
  return `${where}${issue.message}`;
}

/** Parses JSON text from `path` against `schema`, or throws one line naming the file. */
function parseJsonFile<T>(path: string, text: string, schema: z.ZodType<T>, expected: string): T {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new Error(
      `${path}: not valid JSON (${
        (e as Error).message
      }); replace it with the model's original file`,
    );
  }
  const result = schema.safeParse(raw);
  if (!result.success) {
    throw new Error(
      `${path}: malformed, ${issueLine(result.error)}; expected ${expected} — ` +
        `replace it with the model's original file`,
    );
  }
  return result.data;
}

const VOCAB_EXPECTED = "an object mapping each token to a non-negative integer id";

function toVocabMap(path: string, record: Record<string, number>): Map<string, number> {
  const vocab = new Map(Object.entries(record));
  if (vocab.size === 0) {
    throw new Error(`${path}: the vocabulary is empty; replace it with the model's original file`);
  }
  return vocab;
}

/** Parses merges.txt: an optional `#version` header, then one `a b` pair per line. */
export function parseMerges(path: string, text: string): [string, string][] {
  const merges: [string, string][] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].replace(/\r$/, "");
    if (line === "" || (i === 0 && line.startsWith("#version"))) continue;
    const parts = line.split(" ");
    if (parts.length !== 2 || parts[0] === "" || parts[1] === "") {
      throw new Error(
        `${path}:${i + 1}: malformed merge ${JSON.stringify(line)}, expected two symbols ` +
          `separated by one space; replace it with the model's original merges.txt`,
      );
    }
    merges.push([parts[0], parts[1]]);
  }
  if (merges.length === 0) {
    throw new Error(`${path}: no merges found; replace it with the model's original merges.txt`);
  }
  return merges;
}

function parseMergeEntries(path: string, entries: (string | [string, string])[]) {
  return entries.map((m, i): [string, string] => {
    if (Array.isArray(m)) return m;
    const parts = m.split(" ");
    if (parts.length !== 2 || parts[0] === "" || parts[1] === "") {
      throw new Error(
        `${path}: malformed, at model.merges.${i}: ${JSON.stringify(m)} is not two symbols ` +
          `separated by one space; replace it with the model's original file`,
      );
    }
    return [parts[0], parts[1]];
  });
}

function toSpecial(value: z.infer<typeof TokenSchema> | undefined): SpecialToken | undefined {
  if (value === undefined || value === null) return undefined;
  // transformers 4.28: a plain-string special token strips whitespace on both sides.
  if (typeof value === "string") return { content: value, lstrip: true, rstrip: true };
  return { content: value.content, lstrip: value.lstrip ?? false, rstrip: value.rstrip ?? false };
}

function defaultSpecial(content: string): SpecialToken {
  return { content, lstrip: false, rstrip: false };
}

/**
 * Loads the tokenizer files of `modelDir`. Prefers vocab.json + merges.txt (what HF's slow
 * tokenizer reads); falls back to tokenizer.json's `model.vocab` / `model.merges`.
 */
export async function readTokenizerFiles(modelDir: string): Promise<TokenizerFiles> {
  const vocabPath = joinPath(modelDir, "vocab.json");
  const mergesPath = joinPath(modelDir, "merges.txt");
  const tokJsonPath = joinPath(modelDir, "tokenizer.json");
  const [vocabText, mergesText] = await Promise.all([
    readOptional(vocabPath),
    readOptional(mergesPath),
  ]);

  let vocab: Map<string, number>;
  let merges: [string, string][];
  const extraSpecial: SpecialToken[] = [];
  if (vocabText !== undefined && mergesText !== undefined) {
    vocab = toVocabMap(vocabPath, parseJsonFile(vocabPath, vocabText, VocabSchema, VOCAB_EXPECTED));
    merges = parseMerges(mergesPath, mergesText);
  } else {
    const tokJsonText = await readOptional(tokJsonPath);
    if (tokJsonText === undefined) {
      const missing = vocabText === undefined ? vocabPath : mergesPath;
      throw new Error(`${missing}: not found; ${NEEDS}`);
    }
    const tj = parseJsonFile(
      tokJsonPath,
      tokJsonText,
      TokenizerJsonSchema,
      "a Hugging Face tokenizer.json with a BPE model (model.vocab and model.merges)",
    );
    vocab = toVocabMap(tokJsonPath, tj.model.vocab);
    merges = parseMergeEntries(tokJsonPath, tj.model.merges);
    for (const t of tj.added_tokens ?? []) {
      if (!vocab.has(t.content)) vocab.set(t.content, t.id);
      extraSpecial.push({
        content: t.content,
        lstrip: t.lstrip ?? false,
        rstrip: t.rstrip ?? false,
      });
    }
  }

  // HF: tokenizer_config.json first, then special_tokens_map.json overrides it.
  const configPath = joinPath(modelDir, "tokenizer_config.json");
  const mapPath = joinPath(modelDir, "special_tokens_map.json");
  const [configText, mapText] = await Promise.all([
    readOptional(configPath),
    readOptional(mapPath),
  ]);
  const config = configText === undefined ? {} : parseJsonFile(
    configPath,
    configText,
    TokenizerConfigSchema,
    "a JSON object of tokenizer settings",
  );
  const map: Specials = mapText === undefined
    ? {}
    : parseJsonFile(mapPath, mapText, SpecialsSchema, "a JSON object of special tokens");
  const merged: Specials = { ...config };
  for (const [k, v] of Object.entries(map) as [keyof Specials, unknown][]) {
    if (v !== undefined) (merged as Record<string, unknown>)[k] = v;
  }

  for (const key of ["sep_token", "cls_token", "mask_token"] as const) {
    const t = toSpecial(merged[key]);
    if (t) extraSpecial.push(t);
  }
  for (const v of merged.additional_special_tokens ?? []) {
    const t = toSpecial(v);
    if (t) extraSpecial.push(t);
  }

  return {
    vocab,
    merges,
    bos: toSpecial(merged.bos_token) ?? defaultSpecial(OPT_DEFAULTS.bos),
    eos: toSpecial(merged.eos_token) ?? defaultSpecial(OPT_DEFAULTS.eos),
    unk: toSpecial(merged.unk_token) ?? defaultSpecial(OPT_DEFAULTS.unk),
    pad: toSpecial(merged.pad_token) ?? defaultSpecial(OPT_DEFAULTS.pad),
    extraSpecial,
    addBosToken: config.add_bos_token ?? OPT_DEFAULTS.addBosToken,
    addPrefixSpace: config.add_prefix_space ?? OPT_DEFAULTS.addPrefixSpace,
  };
}
