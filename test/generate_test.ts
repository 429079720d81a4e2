/**
 * Generation with the KV cache: greedy tokens with the cache equal those without it on tiny-opt
 * (batched with left padding, whole model and a two-stage split, LoRA too), and the cached
 * incremental forward matches the full forward.
 */
import { strict as assert } from "node:assert";
import * as tf from "@tensorflow/tfjs-core";
import { initBackend } from "../src/tensor/backend.ts";
import { openCheckpoint } from "../src/model/checkpoint.ts";
import { padBatch, stageForward, wholeModel } from "../src/model/opt.ts";
import { loadStage } from "../src/model/load.ts";
import {
  createStageCache,
  disposeStageCache,
  generateGreedy,
  stageForwardCached,
} from "../src/model/generate.ts";
import { attachLora } from "../src/dpzo/lora.ts";
import { loadTokenizer } from "../src/tokenizer/mod.ts";
import { FIXTURES, missing } from "./fixtures.ts";

const TINY = `${FIXTURES}/tiny-opt`;
const TEXTS = [
  "Title: Paris\nContext: Paris is the capital of France.\nQuestion: What is Paris?\nAnswer:",
  "Passage: The game ended 21 to 14.\nQuestion: How many points?\nAnswer:",
  "Hello",
];

Deno.test({
  name: "greedy generation with the KV cache gives the same tokens as without it",
  ignore: missing(TINY),
  fn: async () => {
    await initBackend("wasm");
    const ckpt = await openCheckpoint(TINY);
    const tok = await loadTokenizer(TINY);
    const prompts = TEXTS.map((t) => tok.encode(t));
    const whole = await loadStage(ckpt, wholeModel(ckpt.config));
    const opts = { maxNewTokens: 12, isStop: (t: number) => t === tok.eosId };
    const cached = generateGreedy(whole, prompts, opts);
    const plain = generateGreedy(whole, prompts, { ...opts, useCache: false });
    assert.deepEqual(cached, plain);
    assert.equal(cached[0].length, 12);
    // Left padding does not change a row's tokens: each prompt alone gives the same.
    prompts.forEach((p, i) => assert.deepEqual(generateGreedy(whole, [p], opts)[0], cached[i]));
    // Per stage: a two-stage pipeline, each stage with its own cache.
    const first = await loadStage(ckpt, {
      firstLayer: 0,
      endLayer: 1,
      embeddings: true,
      head: false,
    });
    const last = await loadStage(ckpt, {
      firstLayer: 1,
      endLayer: 2,
      embeddings: false,
      head: true,
    });
    assert.deepEqual(generateGreedy([first, last], prompts, opts), cached);
    // A stop predicate ends a row early and drops the stop token.
    const stopAt = cached[0][3];
    const stopped = generateGreedy(whole, [prompts[0]], { ...opts, isStop: (t) => t === stopAt });
    assert.deepEqual(stopped[0], cached[0].slice(0, cached[0].indexOf(stopAt)));
    // LoRA with non-zero B: adapters are applied on the cached path too.
    attachLora(whole, { rank: 4, alpha: 8, initSeed: 3 });
    for (const [name, t] of whole.weights) {
      if (name.includes("lora_B")) {
        const v = tf.randomNormal([t.length], 0, 0.5, "float32", 7);
        (t as Float32Array).set(v.dataSync());
        v.dispose();
      }
    }
    assert.deepEqual(
      generateGreedy(whole, prompts, opts),
      generateGreedy(whole, prompts, { ...opts, useCache: false }),
    );
  },
});

Deno.test({
  name: "the cached forward, token by token, matches the full forward",
  ignore: missing(TINY),
  fn: async () => {
    await initBackend("wasm");
    const ckpt = await openCheckpoint(TINY);
    const whole = await loadStage(ckpt, wholeModel(ckpt.config));
    const seqs = [[2, 100, 200, 300, 400, 500], [2, 7, 8]];
    const full = padBatch(seqs, 1, true);
    const ref = stageForward(whole, full).arraySync() as number[][];
    const cache = createStageCache(2);
    const S = full.seqLen;
    // Prefill the first 3 columns, then one column at a time.
    const cols = (from: number, to: number) => {
      const n = to - from, ids = new Int32Array(2 * n), mask = new Int32Array(2 * n);
      for (let b = 0; b < 2; b++) {
        for (let s = 0; s < n; s++) {
          ids[b * n + s] = full.ids[b * S + from + s];
          mask[b * n + s] = full.mask[b * S + from + s];
        }
      }
      return { batchSize: 2, seqLen: n, ids, mask };
    };
    const chunks = [[0, 3], [3, 4], [4, 5], [5, 6]];
    for (const [from, to] of chunks) {
      const out = stageForwardCached(whole, cache, cols(from, to)).arraySync() as number[][];
      const n = to - from;
      for (let b = 0; b < 2; b++) {
        for (let s = 0; s < n; s++) {
          if (full.mask[b * S + from + s] === 0) continue;
          for (let d = 0; d < out.length; d++) {
            const want = ref[d][b * S + from + s], got = out[d][b * n + s];
            assert.ok(
              Math.abs(want - got) < 1e-4,
              `b ${b} s ${from + s} d ${d}: ${got} vs ${want}`,
            );
          }
        }
      }
    }
    assert.equal(cache.length, 6);
    disposeStageCache(cache);
  },
});
