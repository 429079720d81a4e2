/**
 * `dpzo score` as the README shows it, on both fixtures: the ids are the reference tokenizer
 * ids, the loss is Hugging Face's per-text cross-entropy, and bad input is one clear line.
 */
import { strict as assert } from "node:assert";
import { dpzo, FIXTURES, missing, readJson } from "./fixtures.ts";

for (const model of ["tiny-opt", "small-opt"]) {
  Deno.test({
    name: `dpzo score --json on ${model} gives the reference ids and losses`,
    ignore: missing(`${FIXTURES}/${model}`),
    fn: async () => {
      const ref = readJson(`${FIXTURES}/${model}/reference.json`);
      const dir = await Deno.makeTempDir();
      const input = `${dir}/texts.jsonl`;
      await Deno.writeTextFile(
        input,
        ref.texts.map((text: string) => JSON.stringify({ text })).join("\n"),
      );
      const r = await dpzo(
        "score",
        "--model",
        `${FIXTURES}/${model}`,
        "--input",
        input,
        "--json",
        "--batch",
        "3",
      );
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /backend: wasm/);
      const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
      assert.equal(lines.length, ref.texts.length);
      lines.forEach((line, i) => {
        assert.deepEqual(line.ids, ref.token_ids[i]);
        const seq = ref.sequences[i];
        assert.ok(Math.abs(line.loss - seq.ce_mean) <= 1e-5, `loss ${line.loss} vs ${seq.ce_mean}`);
        if (seq.last.top2_margin > 1e-4) assert.equal(line.next_token, seq.last.argmax);
      });
      const plain = await dpzo("score", "--model", `${FIXTURES}/${model}`, "--input", input);
      assert.deepEqual(
        plain.stdout.trim().split("\n"),
        ref.token_ids.map((ids: number[]) => `${ids.length} token${ids.length === 1 ? "" : "s"}`),
      );
      await Deno.remove(dir, { recursive: true });
    },
  });
}

Deno.test({
  name: "dpzo score: a malformed input line and a bad flag are one clear line each",
  ignore: missing(`${FIXTURES}/tiny-opt`),
  fn: async () => {
    const dir = await Deno.makeTempDir();
    await Deno.writeTextFile(`${dir}/bad.jsonl`, '{"text": "ok"}\n{"txt": 3}\n');
    const bad = await dpzo(
      "score",
      "--model",
      `${FIXTURES}/tiny-opt`,
      "--input",
      `${dir}/bad.jsonl`,
    );
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /bad\.jsonl:2: text: expected a string/);
    const flag = await dpzo(
      "score",
      "--model",
      `${FIXTURES}/tiny-opt`,
      "--input",
      `${dir}/bad.jsonl`,
      "--batch",
      "x",
    );
    assert.equal(flag.code, 2);
    assert.match(flag.stderr, /--batch: expected a number/);
    await Deno.remove(dir, { recursive: true });
  },
});
