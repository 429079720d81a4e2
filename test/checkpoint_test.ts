/**
 * Checkpoint loading: bad input gets one clear line naming the file and the problem, sharded
 * checkpoints and `decoder.` prefixes load, and a stage reads only its own tensors.
 */
import { strict as assert } from "node:assert";
import { loadTensor, openCheckpoint } from "../src/model/checkpoint.ts";
import { parseOptConfig } from "../src/model/config.ts";
import {
  readSafetensorsHeader,
  readTensor,
  toFloat32,
  writeSafetensors,
} from "../src/model/safetensors.ts";
import { FIXTURES, missing } from "./fixtures.ts";

const TINY = `${FIXTURES}/tiny-opt`;

/** Builds a raw safetensors file from a header object and a data length. */
function rawSafetensors(header: unknown, dataBytes: number): Uint8Array {
  let json = JSON.stringify(header);
  while ((8 + json.length) % 8) json += " ";
  const h = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + h.length + dataBytes);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
  out.set(h, 8);
  return out;
}

async function rejects(p: Promise<unknown>, pattern: RegExp) {
  await assert.rejects(p, (e: Error) => {
    assert.match(e.message, pattern);
    assert.ok(!e.message.includes("\n"), `one line: ${e.message}`);
    return true;
  });
}

Deno.test("write then read a safetensors file round-trips float32 data", async () => {
  const dir = await Deno.makeTempDir();
  const data = Float32Array.from([1, -2.5, 3e-8, 4]);
  await writeSafetensors(`${dir}/m.safetensors`, [{ name: "b", shape: [2, 2], data }]);
  const h = await readSafetensorsHeader(`${dir}/m.safetensors`);
  const e = h.tensors.get("b")!;
  assert.deepEqual(e.shape, [2, 2]);
  assert.deepEqual([...await readTensor(`${dir}/m.safetensors`, e)], [...data]);
  assert.deepEqual([...Deno.readDirSync(dir)].map((f) => f.name), ["m.safetensors"]);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("F16 and BF16 convert to float32", () => {
  // 1.0 = 0x3c00 in f16, -2 = 0xc000; 1.0 = 0x3f80 in bf16, 0.5 = 0x3f00.
  assert.deepEqual([...toFloat32(new Uint8Array([0x00, 0x3c, 0x00, 0xc0]), "F16")], [1, -2]);
  assert.deepEqual([...toFloat32(new Uint8Array([0x80, 0x3f, 0x00, 0x3f]), "BF16")], [1, 0.5]);
});

Deno.test("a truncated safetensors file is named with the problem", async () => {
  const dir = await Deno.makeTempDir();
  const good = rawSafetensors({ w: { dtype: "F32", shape: [4], data_offsets: [0, 16] } }, 16);
  await Deno.writeFile(`${dir}/t.safetensors`, good.subarray(0, good.length - 8));
  await rejects(readSafetensorsHeader(`${dir}/t.safetensors`), /t\.safetensors: .*truncated/);
  await Deno.writeFile(`${dir}/short.safetensors`, good.subarray(0, 5));
  await rejects(readSafetensorsHeader(`${dir}/short.safetensors`), /short\.safetensors: truncated/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a header whose offsets lie is refused", async () => {
  const dir = await Deno.makeTempDir();
  const lying = rawSafetensors({ w: { dtype: "F32", shape: [4], data_offsets: [0, 12] } }, 16);
  await Deno.writeFile(`${dir}/l.safetensors`, lying);
  await rejects(readSafetensorsHeader(`${dir}/l.safetensors`), /tensor w: data_offsets \[0, 12\]/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("an unknown dtype names the tensor and the dtypes dpzo reads", async () => {
  const dir = await Deno.makeTempDir();
  const f = rawSafetensors({ w: { dtype: "I8", shape: [4], data_offsets: [0, 4] } }, 4);
  await Deno.writeFile(`${dir}/d.safetensors`, f);
  await rejects(readSafetensorsHeader(`${dir}/d.safetensors`), /tensor w has dtype I8.*F32, F16/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a wrong config names the field", () => {
  assert.throws(
    () => parseOptConfig({ vocab_size: 10, hidden_size: 8 }, "x/config.json"),
    /x\/config\.json: num_hidden_layers: /,
  );
  assert.throws(
    () =>
      parseOptConfig({
        vocab_size: 10,
        hidden_size: 10,
        num_hidden_layers: 1,
        ffn_dim: 4,
        num_attention_heads: 3,
        max_position_embeddings: 8,
      }),
    /hidden_size \(10\) must be divisible by num_attention_heads \(3\)/,
  );
  const postLn = parseOptConfig({
    vocab_size: 10,
    hidden_size: 8,
    num_hidden_layers: 1,
    ffn_dim: 4,
    num_attention_heads: 2,
    max_position_embeddings: 8,
    do_layer_norm_before: false,
    word_embed_proj_dim: 4,
  });
  assert.equal(postLn.preLayerNorm, false);
  assert.equal(postLn.hasFinalLayerNorm, false);
  assert.equal(postLn.hasProjections, true);
});

Deno.test({
  name: "a missing tensor and a pytorch_model.bin-only directory get clear errors",
  ignore: missing(TINY),
  fn: async () => {
    const dir = await Deno.makeTempDir();
    await Deno.copyFile(`${TINY}/config.json`, `${dir}/config.json`);
    await Deno.writeTextFile(`${dir}/pytorch_model.bin`, "");
    await rejects(openCheckpoint(dir), /only pytorch_model\.bin found.*safe_serialization=True/);
    await Deno.remove(`${dir}/pytorch_model.bin`);
    await writeSafetensors(`${dir}/model.safetensors`, [
      { name: "decoder.embed_tokens.weight", shape: [1], data: new Float32Array(1) },
    ]);
    const ckpt = await openCheckpoint(dir);
    assert.ok(ckpt.tensors.has("model.decoder.embed_tokens.weight"), "decoder. prefix accepted");
    await rejects(
      loadTensor(ckpt, "model.decoder.layers.0.fc1.weight", [256, 64]),
      /tensor model\.decoder\.layers\.0\.fc1\.weight is missing/,
    );
    await rejects(
      loadTensor(ckpt, "model.decoder.embed_tokens.weight", [50272, 64]),
      /has shape \[1\] but config\.json implies \[50272,64\]/,
    );
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "a sharded checkpoint (model.safetensors.index.json) loads like the single file",
  ignore: missing(TINY),
  fn: async () => {
    const single = await openCheckpoint(TINY);
    const dir = await Deno.makeTempDir();
    await Deno.copyFile(`${TINY}/config.json`, `${dir}/config.json`);
    const names = [...single.tensors.keys()].sort();
    const shards: Record<string, string> = {};
    const parts = [names.slice(0, 5), names.slice(5)];
    for (const [i, part] of parts.entries()) {
      const file = `model-0000${i + 1}-of-00002.safetensors`;
      const tensors = [];
      for (const name of part) {
        const loc = single.tensors.get(name)!;
        tensors.push({ name, shape: loc.entry.shape, data: await readTensor(loc.path, loc.entry) });
        shards[name] = file;
      }
      await writeSafetensors(`${dir}/${file}`, tensors);
    }
    await Deno.writeTextFile(
      `${dir}/model.safetensors.index.json`,
      JSON.stringify({ metadata: {}, weight_map: shards }),
    );
    const sharded = await openCheckpoint(dir);
    assert.deepEqual([...sharded.tensors.keys()].sort(), names);
    const name = names[7];
    const a = await loadTensor(single, name, single.tensors.get(name)!.entry.shape);
    const b = await loadTensor(sharded, name, sharded.tensors.get(name)!.entry.shape);
    assert.deepEqual(a, b);
    await Deno.remove(`${dir}/model-00002-of-00002.safetensors`);
    await rejects(
      openCheckpoint(dir),
      /shard model-00002-of-00002\.safetensors is listed but missing/,
    );
    await Deno.remove(dir, { recursive: true });
  },
});
