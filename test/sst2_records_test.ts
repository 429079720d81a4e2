/**
 * SST-2 as the Hub's glue/sst2 lays it out (parquet `train` and `validation` files with
 * `sentence` and an integer `label`) and as JSONL: train and validation are drawn from train,
 * the test split from validation, seeded and disjoint.
 */
import { strict as assert } from "node:assert";
import { parquetWriteBuffer } from "hyparquet-writer";
import { loadSst2 } from "../src/data/sst2.ts";

const rows = (n: number, tag: string) =>
  Array.from({ length: n }, (_, i) => ({ sentence: `${tag} sentence ${i} `, label: i % 2 }));

Deno.test("SST-2 from parquet train/validation files (the Hub layout)", async () => {
  const dir = await Deno.makeTempDir();
  for (const [name, data] of [["train", rows(40, "tr")], ["validation", rows(12, "va")]] as const) {
    const buf = parquetWriteBuffer({
      columnData: [
        { name: "sentence", data: data.map((r) => r.sentence), type: "STRING" },
        { name: "label", data: data.map((r) => r.label), type: "INT32" },
      ],
    });
    await Deno.writeFile(`${dir}/${name}-00000-of-00001.parquet`, new Uint8Array(buf));
  }
  const s = await loadSst2(dir, { train: 20, val: 10, test: 12, seed: 3 });
  assert.equal(s.train.length, 20);
  assert.equal(s.val.length, 10);
  assert.equal(s.test.length, 12);
  assert.ok(s.test.every((e) => e.sentence.startsWith("va")), "test from validation");
  assert.ok([...s.train, ...s.val].every((e) => e.sentence.startsWith("tr")));
  const trainSet = new Set(s.train.map((e) => e.sentence));
  assert.ok(s.val.every((e) => !trainSet.has(e.sentence)), "disjoint");
  assert.ok(s.train.every((e) => e.label === 0 || e.label === 1));
  await Deno.remove(dir, { recursive: true });
});

Deno.test("SST-2 from one JSONL file; a bad label names the record", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(
    `${dir}/sst2.jsonl`,
    rows(30, "j").map((r) => JSON.stringify(r)).join("\n"),
  );
  const s = await loadSst2(`${dir}/sst2.jsonl`, { train: 10, val: 5, test: 5, seed: 1 });
  assert.equal(s.train.length + s.val.length + s.test.length, 20);
  await Deno.writeTextFile(`${dir}/bad.jsonl`, JSON.stringify({ sentence: "x", label: 7 }));
  await assert.rejects(
    loadSst2(`${dir}/bad.jsonl`, { train: 1, val: 0, test: 0, seed: 1 }),
    /bad\.jsonl: record 1: field "label" must be 0 or 1/,
  );
  await Deno.remove(dir, { recursive: true });
});
