/**
 * Pipeline stages: running the model as two stages (embeddings + layer 0, then layer 1 + head)
 * gives exactly the whole model's output, and each stage holds only its own parameters.
 */
import { strict as assert } from "node:assert";
import { initBackend } from "../src/tensor/backend.ts";
import { openCheckpoint } from "../src/model/checkpoint.ts";
import {
  crossEntropyAt,
  nextTokenTargets,
  padBatch,
  stageForward,
  stageParameters,
  wholeModel,
} from "../src/model/opt.ts";
import { loadStage } from "../src/model/load.ts";
import { FIXTURES, missing } from "./fixtures.ts";

Deno.test({
  name: "tiny-opt split into two stages equals the whole model bit for bit",
  ignore: missing(`${FIXTURES}/tiny-opt`),
  fn: async () => {
    await initBackend("wasm");
    const ckpt = await openCheckpoint(`${FIXTURES}/tiny-opt`);
    const whole = await loadStage(ckpt, wholeModel(ckpt.config));
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
    assert.ok(!first.weights.has("model.decoder.layers.1.fc1.weight"));
    assert.ok(!last.weights.has("model.decoder.embed_positions.weight"));
    assert.ok(
      last.weights.has("model.decoder.embed_tokens.weight"),
      "tied LM head on the last stage",
    );
    const batch = padBatch([[2, 100, 200, 300], [2, 7]], 1);
    const { positions, targets } = nextTokenTargets(batch);
    const h = stageForward(whole, batch);
    const expected = crossEntropyAt(whole, h, positions, targets);
    const mid = stageForward(first, batch);
    const out = stageForward(last, batch, mid);
    assert.deepEqual(crossEntropyAt(last, out, positions, targets), expected);
    const total = stageParameters(ckpt.config, wholeModel(ckpt.config)).length;
    assert.equal(first.specs.length + last.specs.length, total + 1, "only embed_tokens is on both");
  },
});
