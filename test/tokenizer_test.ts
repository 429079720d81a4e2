/**
 * Tests for src/tokenizer: the HF reference cases of both fixtures id for id, special tokens in
 * raw text, decode round trips, tokenizer.json loading, Python `\s` semantics and the error
 * lines for missing or malformed files.
 */

import { strict as assert } from "node:assert";
import {
  createTokenizer,
  gpt2Split,
  loadTokenizer,
  PY_ISSPACE,
  PY_REGEX_WS,
  readTokenizerFiles,
  type Tokenizer,
} from "../src/tokenizer/mod.ts";
import { FIXTURES, missing } from "./fixtures.ts";

const MODELS = ["tiny-opt", "small-opt"];

const haveFixtures = !MODELS.some((m) => missing(`${FIXTURES}/${m}/reference.json`));

interface Case {
  text: string;
  ids: number[];
  tokens?: string[];
}

interface Reference {
  bos_token_id: number;
  eos_token_id: number;
  pad_token_id: number;
  unk_token_id: number;
  vocab_entries: number;
  cases: Case[];
  special_token_cases: Case[];
}

async function reference(model: string): Promise<Reference> {
  return JSON.parse(await Deno.readTextFile(`${FIXTURES}/${model}/reference.json`)).tokenizer;
}

const loaded = new Map<string, Promise<Tokenizer>>();
function fixtureTokenizer(model: string): Promise<Tokenizer> {
  if (!loaded.has(model)) loaded.set(model, loadTokenizer(`${FIXTURES}/${model}`));
  return loaded.get(model)!;
}

for (const model of MODELS) {
  Deno.test({
    name: `${model}: every reference case id for id`,
    ignore: !haveFixtures,
    async fn() {
      const ref = await reference(model);
      const tok = await fixtureTokenizer(model);
      assert.equal(ref.cases.length, 17);
      for (const c of ref.cases) {
        assert.deepEqual(tok.encode(c.text), c.ids, `encode(${JSON.stringify(c.text)})`);
      }
    },
  });

  Deno.test({
    name: `${model}: special tokens in raw text split out as HF's slow tokenizer does`,
    ignore: !haveFixtures,
    async fn() {
      const ref = await reference(model);
      const tok = await fixtureTokenizer(model);
      assert.ok(ref.special_token_cases.length > 0);
      for (const c of ref.special_token_cases) {
        const ids = tok.encode(c.text);
        assert.deepEqual(ids, c.ids, `encode(${JSON.stringify(c.text)})`);
        assert.deepEqual(ids.map((id) => tok.idToToken(id)), c.tokens);
      }
    },
  });

  Deno.test({
    name: `${model}: special ids and sizes match the reference`,
    ignore: !haveFixtures,
    async fn() {
      const ref = await reference(model);
      const tok = await fixtureTokenizer(model);
      assert.equal(tok.bosId, ref.bos_token_id);
      assert.equal(tok.eosId, ref.eos_token_id);
      assert.equal(tok.padId, ref.pad_token_id);
      assert.equal(tok.unkId, ref.unk_token_id);
      assert.equal(tok.vocabSize, ref.vocab_entries);
      assert.equal(tok.tokenToId("Ġthe"), 5);
      assert.equal(tok.tokenToId("<mask>"), 50264);
      assert.equal(tok.tokenToId("no such token"), undefined);
    },
  });
}

Deno.test({
  name: "options: addBos false, splitSpecialTokens false (load-time and per call)",
  ignore: !haveFixtures,
  async fn() {
    const tok = await fixtureTokenizer("tiny-opt");
    assert.deepEqual(tok.encode("", { addBos: false }), []);
    assert.deepEqual(tok.encode("Hi", { addBos: false }), [30086]);
    // `</s>` as plain text: "<", "/", "s", ">" pieces, as for "<s>" in the reference.
    const asText = tok.encode("a</s>b", { splitSpecialTokens: false });
    assert.notDeepEqual(asText, [2, 102, 2, 428]);
    assert.ok(!asText.slice(1).includes(2));
    const noSplit = await loadTokenizer(`${FIXTURES}/tiny-opt`, { splitSpecialTokens: false });
    assert.deepEqual(noSplit.encode("a</s>b"), asText);
    assert.deepEqual(noSplit.encode("a</s>b", { splitSpecialTokens: true }), [2, 102, 2, 428]);
  },
});

Deno.test({
  name: "decode inverts encode (byte level, with and without special tokens)",
  ignore: !haveFixtures,
  async fn() {
    const ref = await reference("tiny-opt");
    const tok = await fixtureTokenizer("tiny-opt");
    for (const c of [...ref.cases, ...ref.special_token_cases]) {
      const ids = tok.encode(c.text);
      assert.equal(tok.decode(ids), "</s>" + c.text);
      assert.equal(tok.decode(ids.slice(1), { skipSpecialTokens: false }), c.text);
    }
    assert.equal(tok.decode(tok.encode("x <pad> y</s>"), { skipSpecialTokens: true }), "x  y");
    // Ids the model has but the tokenizer lacks (50265..50271) decode to nothing.
    assert.equal(tok.decode([31414, 50270, 232]), "Hello world");
    // A lone byte of a multi-byte character becomes U+FFFD (errors="replace").
    const rocket = tok.encode("🚀", { addBos: false });
    assert.ok(rocket.length > 1);
    assert.equal(tok.decode(rocket.slice(0, 1)), "\ufffd");
  },
});

Deno.test({
  name: "tokenizer.json alone (string and pair merges) gives the same ids",
  ignore: !haveFixtures,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "dpzo_tok_" });
    try {
      const src = `${FIXTURES}/tiny-opt`;
      const vocab = JSON.parse(await Deno.readTextFile(`${src}/vocab.json`));
      const merges = (await Deno.readTextFile(`${src}/merges.txt`)).split("\n").slice(1)
        .filter((l) => l !== "");
      const mixed = merges.map((m, i) => i % 2 ? m : m.split(" "));
      await Deno.writeTextFile(
        `${dir}/tokenizer.json`,
        JSON.stringify({ model: { type: "BPE", vocab, merges: mixed } }),
      );
      const tok = await loadTokenizer(dir);
      const ref = await reference("tiny-opt");
      for (const c of [...ref.cases, ...ref.special_token_cases]) {
        assert.deepEqual(tok.encode(c.text), c.ids, `encode(${JSON.stringify(c.text)})`);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("Python `regex` \\s: White_Space (U+0085 in, U+FEFF and U+001C..U+001F out)", () => {
  const ws = new RegExp(`^[${PY_REGEX_WS}]$`, "u");
  const whiteSpace = /^\p{White_Space}$/u;
  for (let cp = 0; cp <= 0x10ffff; cp++) {
    if (cp >= 0xd800 && cp <= 0xdfff) continue;
    const ch = String.fromCodePoint(cp);
    assert.equal(ws.test(ch), whiteSpace.test(ch), `U+${cp.toString(16)}`);
  }
  const isspace = new RegExp(`^[${PY_ISSPACE}]$`, "u");
  for (const ch of ["\x1c", "\x1f", "\x85", "\u3000"]) assert.ok(isspace.test(ch));
  assert.ok(!isspace.test("\ufeff"));
  // Splits from Python's `regex` module (2026.5.9) with GPT-2's pattern.
  const pinned: [string, string[]][] = [
    ["x \x1cy", ["x", " \x1c", "y"]],
    ["a \x1c\x1d b", ["a", " \x1c\x1d", " b"]],
    ["x \x85y \ufeffz", ["x", " ", "\x85", "y", " \ufeff", "z"]],
    ["a  \u3000b", ["a", "  ", "\u3000", "b"]],
    ["it\u2019s 3\u00b2", ["it", "\u2019", "s", " 3\u00b2"]],
    ["don't  go ", ["don", "'t", " ", " go", " "]],
  ];
  for (const [text, pieces] of pinned) assert.deepEqual(gpt2Split(text), pieces, text);
});

/** Writes a tiny model directory: vocab over a, b, ab and the specials; one merge. */
async function tinyDir(files: Record<string, string>): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "dpzo_tok_" });
  for (const [name, text] of Object.entries(files)) {
    await Deno.writeTextFile(`${dir}/${name}`, text);
  }
  return dir;
}

const TINY_VOCAB = JSON.stringify({ "<s>": 0, "<pad>": 1, "</s>": 2, a: 3, b: 4, ab: 5, "Ġ": 6 });
const TINY_MERGES = "#version: 0.2\na b\n";

async function expectLoadError(files: Record<string, string>, pattern: RegExp, dirInMsg = true) {
  const dir = await tinyDir(files);
  try {
    await assert.rejects(loadTokenizer(dir), (e: Error) => {
      assert.ok(!e.message.includes("\n"), `one line: ${e.message}`);
      assert.match(e.message, pattern);
      if (dirInMsg) assert.ok(e.message.startsWith(dir), e.message);
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("tiny directory: BPE merge, defaults as OPT's when config files are absent", async () => {
  const dir = await tinyDir({ "vocab.json": TINY_VOCAB, "merges.txt": TINY_MERGES });
  try {
    const tok = await loadTokenizer(dir);
    assert.deepEqual(tok.encode("abba"), [2, 5, 4, 3]);
    assert.deepEqual(tok.encode("a<pad>b"), [2, 3, 1, 4]);
    assert.equal(tok.bosId, 2);
    assert.equal(tok.padId, 1);
    assert.equal(tok.decode([2, 5, 6, 3], { skipSpecialTokens: true }), "ab a");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("special tokens from config files: plain strings strip whitespace (HF 4.28)", async () => {
  const dir = await tinyDir({
    "vocab.json": TINY_VOCAB,
    "merges.txt": TINY_MERGES,
    "tokenizer_config.json": JSON.stringify({ add_bos_token: false, pad_token: "<pad>" }),
    "special_tokens_map.json": JSON.stringify({
      bos_token: { content: "<s>", lstrip: false, rstrip: false },
    }),
  });
  try {
    const files = await readTokenizerFiles(dir);
    assert.equal(files.bos.content, "<s>");
    assert.equal(files.addBosToken, false);
    const tok = createTokenizer(files);
    assert.equal(tok.bosId, 0);
    assert.deepEqual(tok.encode("a"), [3]);
    assert.deepEqual(tok.encode("a", { addBos: true }), [0, 3]);
    // "<pad>" given as a plain string eats the spaces on both sides; "<s>" (AddedToken) does not.
    assert.deepEqual(tok.encode("a <pad> b"), [3, 1, 4]);
    assert.deepEqual(tok.encode("a <s>b"), [3, 6, 0, 4]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("errors: missing files name the file and the fix", async () => {
  await expectLoadError(
    { "merges.txt": TINY_MERGES },
    /\/vocab\.json: not found; an OPT model directory needs vocab\.json and merges\.txt \(or tokenizer\.json\)$/,
  );
  await expectLoadError(
    { "vocab.json": TINY_VOCAB },
    /\/merges\.txt: not found; an OPT model directory needs vocab\.json and merges\.txt/,
  );
  await expectLoadError({}, /\/vocab\.json: not found/);
});

Deno.test("errors: malformed vocab.json / merges.txt / tokenizer.json", async () => {
  await expectLoadError(
    { "vocab.json": "{not json", "merges.txt": TINY_MERGES },
    /\/vocab\.json: not valid JSON .*replace it with the model's original file$/,
  );
  await expectLoadError(
    { "vocab.json": JSON.stringify({ a: "x" }), "merges.txt": TINY_MERGES },
    /\/vocab\.json: malformed, at a: .*expected an object mapping each token to a non-negative integer id/,
  );
  await expectLoadError(
    { "vocab.json": JSON.stringify({ "line\nbreak": -1 }), "merges.txt": TINY_MERGES },
    /\/vocab\.json: malformed, at "line\\nbreak": /,
  );
  await expectLoadError(
    { "vocab.json": "[1, 2]", "merges.txt": TINY_MERGES },
    /\/vocab\.json: malformed/,
  );
  await expectLoadError(
    { "vocab.json": "{}", "merges.txt": TINY_MERGES },
    /\/vocab\.json: the vocabulary is empty/,
  );
  await expectLoadError(
    { "vocab.json": TINY_VOCAB, "merges.txt": "#version: 0.2\na b\nabc\n" },
    /\/merges\.txt:3: malformed merge "abc", expected two symbols separated by one space/,
  );
  await expectLoadError(
    { "tokenizer.json": JSON.stringify({ model: { vocab: { a: 0 } } }) },
    /\/tokenizer\.json: malformed, at model\.merges: /,
  );
  await expectLoadError(
    { "vocab.json": TINY_VOCAB, "merges.txt": TINY_MERGES, "tokenizer_config.json": "[]" },
    /\/tokenizer_config\.json: malformed/,
  );
});
