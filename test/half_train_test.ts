/**
 * Training with half-precision weights (`dtype: bfloat16`): the embedded run, the same run over
 * two stages and `dpzo export` end with one final_weights_sha256, and the export holds the
 * bfloat16 weights the run trained (config.json says so), whose float32 values hash to it.
 */
import { strict as assert } from "node:assert";
import { openCheckpoint } from "../src/model/checkpoint.ts";
import { readTensor } from "../src/model/safetensors.ts";
import { stageParameters, wholeModel } from "../src/model/opt.ts";
import { narrowNearest, widen } from "../src/model/half.ts";
import { combineDigests, tensorDigest } from "../src/checkpoint/weights_hash.ts";
import { DATA, dpzo, FIXTURES, lacks, missing, readJson } from "./fixtures.ts";

Deno.test({
  name: "bfloat16 weights: embedded, K=2 and export end with one hash; export is bfloat16",
  ignore: lacks("nats-server") || missing(`${FIXTURES}/tiny-opt`) || missing(`${DATA}/sst2`),
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "dpzo-half-" });
    try {
      const cfg = [
        "--config",
        "configs/tiny-sst2.yaml",
        "--quiet",
        "--set",
        "dtype=bfloat16",
        "--set",
        "mode={type: full}",
        "--set",
        "train.lr=1e-4",
        "--set",
        "train.steps=6",
        "--set",
        "task.val_examples=8",
        "--set",
        "task.test_examples=8",
        "--set",
        "insecure_seed=5",
      ];
      const embedded = await dpzo("train", ...cfg, "--set", `run_dir=${dir}/e`);
      assert.equal(embedded.code, 0, embedded.stderr);
      const k2 = await dpzo("launch", ...cfg, "--stages", "2", "--set", `run_dir=${dir}/k2`);
      assert.equal(k2.code, 0, k2.stderr);
      const hash = readJson(`${dir}/e/summary.json`).final_weights_sha256;
      assert.equal(readJson(`${dir}/k2/summary.json`).final_weights_sha256, hash);

      const out = `${dir}/model`;
      const e = await dpzo("export", "--run", `${dir}/e`, "--out", out);
      assert.equal(e.code, 0, e.stderr);
      assert.match(e.stdout, new RegExp(`final_weights_sha256: ${hash}`));
      assert.equal(readJson(`${out}/config.json`).torch_dtype, "bfloat16");
      // The file's tensors are BF16 and, read as float32, hash to the run's final weights.
      const ckpt = await openCheckpoint(out);
      const digests = [];
      for (const spec of stageParameters(ckpt.config, wholeModel(ckpt.config))) {
        const loc = ckpt.tensors.get(spec.name)!;
        assert.equal(loc.entry.dtype, "BF16", spec.name);
        digests.push(tensorDigest(await readTensor(loc.path, loc.entry)));
      }
      assert.equal(combineDigests(digests), hash);
      // The updates (far below a bfloat16 ulp) moved weights away from the base model's.
      const name = "model.decoder.layers.0.fc1.weight";
      const baseCkpt = await openCheckpoint(`${FIXTURES}/tiny-opt`);
      const b = baseCkpt.tensors.get(name)!, t = ckpt.tensors.get(name)!;
      const base = await readTensor(b.path, b.entry);
      const bits = new Uint16Array(base.length);
      narrowNearest(base, "bfloat16", bits);
      const rounded = new Float32Array(base.length);
      widen(bits, "bfloat16", rounded);
      const trained = await readTensor(t.path, t.entry);
      const moved = trained.filter((v, i) => v !== rounded[i]).length;
      assert.ok(moved > 0, "no weight moved");
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
