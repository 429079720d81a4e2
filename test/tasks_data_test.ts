/**
 * Task data: the loaders read the layouts of ../shared/data (GLUE TSV, SQuAD JSON parts, the
 * DROP JSONL.gz), JSONL with the same fields and parquet; MeZO-style splits are seeded and
 * disjoint (whole passages per split); requests truncate from the left keeping BOS and put the
 * training loss on the answer tokens.
 */
import { strict as assert } from "node:assert";
import { parquetWriteBuffer } from "hyparquet-writer";
import { loadQnli, readQnli } from "../src/data/qnli.ts";
import { loadSquad, readSquad } from "../src/data/squad.ts";
import { loadDrop, readDrop } from "../src/data/drop.ts";
import { drawSplits } from "../src/data/records.ts";
import { loadTaskSplits } from "../src/tasks/mod.ts";
import { generationRequest, targetCrossEntropy } from "../src/tasks/task.ts";
import { qnliPrompt } from "../src/tasks/qnli.ts";
import { loadTokenizer } from "../src/tokenizer/mod.ts";
import { DATA, FIXTURES, missing } from "./fixtures.ts";

const SIZES = { train: 1000, val: 500, test: 1000, seed: 42 };
const key = (e: object) => JSON.stringify(e);

/** No example of one split is in another (a data file may repeat a row within one split). */
function assertDisjoint<T extends object>(s: { train: T[]; val: T[]; test: T[] }) {
  const sets = [s.train, s.val, s.test].map((xs) => new Set(xs.map(key)));
  for (let i = 0; i < 3; i++) {
    for (let j = i + 1; j < 3; j++) {
      for (const k of sets[i]) assert.ok(!sets[j].has(k), "an example is in two splits");
    }
  }
}

Deno.test("splits are seeded, disjoint and keep whole groups apart", () => {
  const items = Array.from({ length: 300 }, (_, i) => ({ id: i, passage: `p${i % 40}` }));
  const sizes = { train: 100, val: 50, test: 100, seed: 7 };
  const a = drawSplits(items, undefined, sizes, "x", (e) => e.passage);
  const b = drawSplits(items, undefined, sizes, "x", (e) => e.passage);
  assert.deepEqual(a, b);
  assert.deepEqual([a.train.length, a.val.length, a.test.length], [100, 50, 100]);
  assertDisjoint(a);
  const passages = (xs: typeof items) => new Set(xs.map((e) => e.passage));
  for (const p of passages(a.test)) assert.ok(!passages(a.train).has(p) && !passages(a.val).has(p));
  for (const p of passages(a.val)) assert.ok(!passages(a.train).has(p));
  assert.notDeepEqual(drawSplits(items, undefined, { ...sizes, seed: 8 }, "x").test, a.test);
  assert.throws(
    () => drawSplits(items, undefined, { ...sizes, train: 290 }, "x"),
    /task\.data: x has 300 examples; the splits need 440/,
  );
});

Deno.test({
  name: "the shared layouts load into MeZO-style splits (1000 / 500 / 1000)",
  ignore: missing(`${DATA}/qnli`) || missing(`${DATA}/squad`) || missing(`${DATA}/drop`),
  fn: async () => {
    const qnli = await loadQnli(`${DATA}/qnli`, SIZES);
    assertDisjoint(qnli);
    assert.equal(qnli.test.length, 1000);
    assert.equal((await readQnli(`${DATA}/qnli/dev.tsv`)).length, 5463);
    const squad = await loadSquad(`${DATA}/squad`, SIZES);
    assertDisjoint(squad);
    assert.deepEqual([squad.train.length, squad.val.length, squad.test.length], [1000, 500, 1000]);
    // part1 gives train + validation, part2 the test split: no shared article.
    const part2 = await readSquad(`${DATA}/squad/dev-v1.1.part2.json`);
    assert.equal(part2.length, 5609);
    const testTitles = new Set(part2.map((e) => e.title));
    assert.ok(squad.test.every((e) => testTitles.has(e.title)));
    assert.ok(squad.train.every((e) => !testTitles.has(e.title)));
    assert.ok(squad.test.some((e) => e.answers.length > 1));
    const drop = await loadDrop(`${DATA}/drop/drop_v0_dev.jsonl.gz`, SIZES);
    assertDisjoint(drop);
    const tp = new Set(drop.test.map((e) => e.passage));
    assert.ok(drop.train.every((e) => !tp.has(e.passage)));
    const all = await readDrop(`${DATA}/drop/drop_v0_dev.jsonl.gz`);
    assert.equal(all.length, 9536);
    const ex = all.find((e) => e.answers.includes("Pakistani and Filipino"))!;
    assert.deepEqual(ex.answers, ["Pakistanis and Filipinos", "Pakistani and Filipino"]);
    assert.match(ex.question, /^What two nationalities/);
  },
});

Deno.test("JSONL and parquet rows with the same fields load", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const rows = Array.from({ length: 12 }, (_, i) => ({
      question: `q${i}?`,
      sentence: `s${i}.`,
      label: i % 2,
    }));
    await Deno.writeTextFile(`${dir}/q.jsonl`, rows.map((r) => JSON.stringify(r)).join("\n"));
    const fromJsonl = await readQnli(`${dir}/q.jsonl`);
    assert.deepEqual(fromJsonl[3], { question: "q3?", sentence: "s3.", label: 1 });
    const buf = parquetWriteBuffer({
      columnData: [
        { name: "question", data: rows.map((r) => r.question), type: "STRING" },
        { name: "sentence", data: rows.map((r) => r.sentence), type: "STRING" },
        { name: "label", data: rows.map((r) => r.label), type: "INT32" },
      ],
    });
    await Deno.writeFile(`${dir}/q.parquet`, new Uint8Array(buf));
    assert.deepEqual(await readQnli(`${dir}/q.parquet`), fromJsonl);
    // SQuAD in the Hugging Face layout (answers as {text, answer_start}), DROP as ucinlp/drop.
    await Deno.writeTextFile(
      `${dir}/squad.jsonl`,
      JSON.stringify({
        id: "a",
        title: "T",
        context: "C",
        question: "Q?",
        answers: { text: ["x", "y"], answer_start: [0, 1] },
      }),
    );
    assert.deepEqual((await readSquad(`${dir}/squad.jsonl`))[0].answers, ["x", "y"]);
    await Deno.writeTextFile(
      `${dir}/drop.jsonl`,
      JSON.stringify({ passage: "P", question: "Q?", answers_spans: { spans: ["3", "3"] } }),
    );
    assert.deepEqual(await readDrop(`${dir}/drop.jsonl`), [
      { passage: "P", question: "Q?", answers: ["3"] },
    ]);
    await Deno.writeTextFile(`${dir}/bad.jsonl`, '{"question": "q", "sentence": "s"}\n');
    await assert.rejects(readQnli(`${dir}/bad.jsonl`), /bad\.jsonl: record 1: field "label"/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a generation request scores the answer tokens; truncation keeps BOS", () => {
  const req = generationRequest([2, 10, 11, 12, 13], [20, 21], ["x"], 5);
  // Prompt + answer is 7 tokens; max 5 keeps BOS and the last 4 tokens.
  assert.deepEqual(req.rows[0].ids, [2, 12, 13, 20, 21]);
  assert.deepEqual(req.rows[0].scores, [{ positions: [2, 3], tokens: [20, 21] }]);
  assert.deepEqual(req.generation, { prompt: [2, 10, 11, 12, 13], answers: ["x"] });
  assert.equal(targetCrossEntropy([-1.5]), 1.5);
  assert.throws(() => generationRequest([2], [1, 2, 3], ["x"], 3), /does not fit task\.max_length/);
});

Deno.test({
  name: "task prompts as documented (QNLI, SQuAD, DROP)",
  ignore: missing(`${FIXTURES}/tiny-opt`) || missing(`${DATA}/squad`) || missing(`${DATA}/drop`),
  fn: async () => {
    const tok = await loadTokenizer(`${FIXTURES}/tiny-opt`);
    assert.equal(
      qnliPrompt({ question: "Who? ", sentence: " He did.", label: 0 }),
      'He did.\nDoes this sentence answer the question "Who?"? Yes or No?',
    );
    const sizes = { train: 4, val: 2, test: 4, seed: 1 };
    const squad = await loadTaskSplits("squad", `${DATA}/squad`, sizes, tok, 2048);
    const text = tok.decode(squad.train[0].rows[0].ids);
    assert.match(text, /^<\/s>Title: [^\n]+\nContext: [^\n]+\nQuestion: [^\n]+\nAnswer: [^\n]+\n$/);
    const answer = squad.train[0].generation!.answers[0];
    const target = squad.train[0].rows[0].scores[0].tokens;
    assert.equal(tok.decode(target), ` ${answer}\n`);
    const drop = await loadTaskSplits("drop", `${DATA}/drop`, sizes, tok, 2048);
    assert.match(
      tok.decode(drop.test[0].rows[0].ids),
      /^<\/s>Passage: .*\nQuestion: .*\nAnswer: .*\n$/s,
    );
    // Long contexts are cut from the left, BOS kept, the answer intact.
    const short = await loadTaskSplits("squad", `${DATA}/squad`, sizes, tok, 64);
    for (const r of short.train) {
      assert.equal(r.rows[0].ids.length <= 64, true);
      assert.equal(r.rows[0].ids[0], tok.bosId);
      assert.equal(r.generation!.prompt[0], tok.bosId);
      assert.ok(tok.decode(r.rows[0].ids).endsWith(`${r.generation!.answers[0]}\n`));
    }
  },
});

Deno.test({
  name: "a folder's layout is detected from its files; when none fits, found and expected",
  ignore: missing(`${DATA}/sst2`),
  fn: async () => {
    const { loadSst2 } = await import("../src/data/sst2.ts");
    const dir = await Deno.makeTempDir();
    try {
      const sizes = { train: 100, val: 20, test: 20, seed: 3 };
      // Only dev.tsv (GLUE TSV without train.tsv): read as a TSV file, all splits from it.
      await Deno.mkdir(`${dir}/dev-only`);
      await Deno.copyFile(`${DATA}/sst2/dev.tsv`, `${dir}/dev-only/dev.tsv`);
      const s = await loadSst2(`${dir}/dev-only`, sizes);
      assert.deepEqual([s.train.length, s.val.length, s.test.length], [100, 20, 20]);
      assertDisjoint(s);
      // Nothing this task reads: the files found, and what was expected.
      await Deno.mkdir(`${dir}/other`);
      await Deno.writeTextFile(`${dir}/other/notes.txt`, "");
      await Deno.copyFile(`${DATA}/sst2/test.tsv`, `${dir}/other/test.tsv`);
      await assert.rejects(
        loadSst2(`${dir}/other`, sizes),
        /holds no SST-2 data file: found notes\.txt, test\.tsv \(test\.tsv: test\* files are skipped.*\); expected SST-2 data: \.tsv, \.jsonl\(\.gz\), \.json or \.parquet files/,
      );
      await assert.rejects(
        loadSquad(`${dir}/dev-only`, sizes),
        /holds no SQuAD data file: found dev\.tsv; expected SQuAD data: \.jsonl\(\.gz\), \.json or \.parquet/,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
