/**
 * `dpzo export` of a LoRA run writes the fine-tuned model: `model.safetensors` holds the merged
 * weights W + (alpha/r) B A (PEFT's merge_and_unload), the PEFT adapter goes to `adapter/`, the
 * files' hashes to SHA256SUMS; `dpzo score` on the export differs from the base; an adapter
 * folder is refused with a line, never read as its base model.
 */
import { strict as assert } from "node:assert";
import { createHash } from "node:crypto";
import { readSafetensorsHeader, readTensor } from "../src/model/safetensors.ts";
import { mergeLora } from "../src/model/peft.ts";
import { openCheckpoint } from "../src/model/checkpoint.ts";
import { DATA, dpzo, FIXTURES, missing, readJson } from "./fixtures.ts";

const TINY = `${FIXTURES}/tiny-opt`;
const needs = missing(TINY) || missing(`${DATA}/sst2`);

async function tensors(path: string): Promise<Map<string, Float32Array>> {
  const h = await readSafetensorsHeader(path);
  const out = new Map<string, Float32Array>();
  for (const [name, e] of h.tensors) out.set(name, await readTensor(path, e));
  return out;
}

async function scoreLoss(model: string, input: string): Promise<number> {
  const r = await dpzo("score", "--model", model, "--input", input, "--json");
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout.trim().split("\n")[0]).loss;
}

Deno.test({
  name: "a LoRA export is the merged model; its adapter is PEFT's; score differs from the base",
  ignore: needs,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "dpzo-export-" });
    try {
      const run = `${dir}/run`;
      const t = await dpzo(
        "train",
        "--config",
        "configs/tiny-sst2.yaml",
        "--quiet",
        ...[
          `run_dir=${run}`,
          "train.steps=12",
          "train.lr=0.01",
          "train.eval_every=4",
          "task.val_examples=8",
          "task.test_examples=8",
          "mode={type: lora, rank: 4, alpha: 16}",
        ].flatMap((s) => ["--set", s]),
      );
      assert.equal(t.code, 0, t.stderr);
      // The run as dpzo train reports it (test/train_test.ts checks the same of a full run).
      assert.match(
        t.stdout,
        /privacy: \([0-9.]+, 1e-5\)-DP for add\/remove of one training example over 12 steps/,
      );
      const summary = readJson(`${run}/summary.json`);
      assert.ok(summary.epsilon > 0 && summary.epsilon <= 8, `epsilon ${summary.epsilon}`);
      assert.equal(summary.private, true);
      assert.equal(summary.steps, 12);
      assert.ok(summary.param_sync_bytes_per_step_per_worker <= 200);
      assert.equal((await Deno.readTextFile(`${run}/ledger.jsonl`)).trim().split("\n").length, 12);
      const evals = (await Deno.readTextFile(`${run}/metrics.jsonl`)).trim().split("\n")
        .map((l) => JSON.parse(l)).filter((m) => m.event === "eval" && m.split === "val");
      assert.equal(evals.length, 4); // steps 0, 4, 8 and the final one
      const sha = summary.final_weights_sha256;

      const out = `${dir}/model`;
      // A stale adapter at the top of the folder (an earlier export) would make transformers
      // load the base instead of model.safetensors: export removes it.
      await Deno.mkdir(out);
      await Deno.writeTextFile(`${out}/adapter_config.json`, "{}");
      const e = await dpzo("export", "--run", run, "--out", out);
      assert.equal(e.code, 0, e.stderr);
      assert.match(e.stdout, new RegExp(`final_weights_sha256: ${sha} \\(equal to the run's`));
      assert.match(e.stdout, /base weights, then the adapter's A and B, before merging/);
      assert.match(e.stdout, /model\.safetensors +sha256 [0-9a-f]{64} +\(LoRA merged/);
      assert.match(e.stdout, /sha256sum -c SHA256SUMS/);
      await assert.rejects(Deno.stat(`${out}/adapter_config.json`));

      // Every file listed in SHA256SUMS has that hash.
      const sums = (await Deno.readTextFile(`${out}/SHA256SUMS`)).trim().split("\n");
      assert.ok(sums.length >= 5, sums.join("\n"));
      for (const line of sums) {
        const [hash, file] = line.split(/ {2}/);
        const h = createHash("sha256").update(await Deno.readFile(`${out}/${file}`)).digest("hex");
        assert.equal(h, hash, file);
      }

      // PEFT's adapter: config naming the base, keys behind base_model.model.
      const cfg = readJson(`${out}/adapter/adapter_config.json`);
      assert.equal(cfg.peft_type, "LORA");
      assert.equal(cfg.r, 4);
      assert.equal(cfg.lora_alpha, 16);
      assert.deepEqual(cfg.target_modules, ["q_proj", "v_proj"]);
      assert.equal(cfg.base_model_name_or_path, await Deno.realPath(TINY));
      const adapter = await tensors(`${out}/adapter/adapter_model.safetensors`);
      const base = await tensors(`${TINY}/model.safetensors`);
      const merged = await tensors(`${out}/model.safetensors`);
      const numLayers = readJson(`${TINY}/config.json`).num_hidden_layers;
      assert.equal(adapter.size, numLayers * 2 * 2);

      // q_proj / v_proj = base + (alpha / r) B A, within float32 rounding; the rest is the base.
      let moved = 0;
      for (const [name, w] of merged) {
        const m = /^model\.decoder\.layers\.(\d+)\.self_attn\.([qv])_proj\.weight$/.exec(name);
        const b = base.get(name) ?? base.get(name.replace(/^model\./, ""))!;
        assert.ok(b, `${name} in the base`);
        if (!m) {
          assert.deepEqual(w, b, `${name} is the base's`);
          continue;
        }
        const key = `base_model.model.${name.replace(/\.weight$/, "")}`;
        const A = adapter.get(`${key}.lora_A.weight`)!, B = adapter.get(`${key}.lora_B.weight`)!;
        assert.ok(A && B, `${key}: lora_A and lora_B in the adapter`);
        const out = Math.sqrt(w.length), rank = A.length / out;
        assert.equal(rank, 4);
        for (let o = 0; o < out; o++) {
          for (let i = 0; i < out; i++) {
            let ba = 0;
            for (let k = 0; k < rank; k++) ba += B[o * rank + k] * A[k * out + i];
            const want = b[o * out + i] + (16 / 4) * ba;
            const got = w[o * out + i];
            // float32 rounding of the result (half an ulp), plus float32 inputs' own rounding
            assert.ok(Math.abs(got - want) <= 2 ** -23 * Math.abs(want) + 1e-12, `${name}`);
            if (got !== b[o * out + i]) moved++;
          }
        }
      }
      assert.ok(moved > 0, "the merged q_proj/v_proj differ from the base");
      const check = mergeLora(Float32Array.of(1, 2), Float32Array.of(3), Float32Array.of(0.5, 2), {
        out: 2,
        in: 1,
        rank: 1,
      }, 2);
      assert.deepEqual([...check], [1 + 2 * 1.5, 2 + 2 * 6]);

      // dpzo score on the export is the fine-tuned model, not the base.
      const input = `${dir}/in.jsonl`;
      await Deno.writeTextFile(
        input,
        '{"text": "a gripping, funny film. It was great"}\n{"text": "dull. It was terrible"}\n',
      );
      const lossBase = await scoreLoss(TINY, input);
      const lossExport = await scoreLoss(out, input);
      assert.notEqual(lossExport, lossBase);

      // The adapter alone, and what dpzo says when given an adapter folder.
      const only = `${dir}/adapter-only`;
      const a = await dpzo("export", "--run", run, "--out", only, "--adapter-only");
      assert.equal(a.code, 0, a.stderr);
      assert.deepEqual(
        [...Deno.readDirSync(only)].map((f) => f.name).sort(),
        // The adapter, and what may be published beside it: the ledger and the list.
        [
          "SHA256SUMS",
          "adapter_config.json",
          "adapter_model.safetensors",
          "ledger.jsonl",
          "release.json",
        ],
      );
      const s = await dpzo("score", "--model", only, "--input", input);
      assert.equal(s.code, 1);
      assert.match(
        s.stderr.trim().split("\n").at(-1)!,
        /^dpzo: --model: .*adapter-only: is a LoRA adapter .* for .*tiny-opt, not a model; .*dpzo export/,
      );
      await assert.rejects(openCheckpoint(`${out}/adapter`), /is a LoRA adapter .*not a model/);
      // An adapter beside a model: dpzo cannot tell whether the model is merged.
      await Deno.copyFile(
        `${out}/adapter/adapter_config.json`,
        `${out}/adapter_config.json`,
      );
      await assert.rejects(openCheckpoint(out), /holds a LoRA adapter .* beside a model/);
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
