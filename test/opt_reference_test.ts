/**
 * The OPT forward pass reproduces Hugging Face's OPTForCausalLM on the shared fixtures
 * (reference.json, generated with transformers 4.28): logits and log-sum-exps within 1e-5,
 * per-example cross-entropy within 1e-5, right and left padding, float16 weights.
 */
import { strict as assert } from "node:assert";
import * as tf from "@tensorflow/tfjs-core";
import { initBackend } from "../src/tensor/backend.ts";
import { openCheckpoint } from "../src/model/checkpoint.ts";
import {
  crossEntropyAt,
  disposeStage,
  logitsAt,
  meanPerRow,
  nextTokenTargets,
  padBatch,
  type Stage,
  stageForward,
  type TokenBatch,
  wholeModel,
} from "../src/model/opt.ts";
import { loadStage } from "../src/model/load.ts";
import { FIXTURES, missing, readJson } from "./fixtures.ts";

const TOL = 1e-5;

function close(actual: number, expected: number, what: string) {
  assert.ok(
    Math.abs(actual - expected) <= TOL,
    `${what}: got ${actual}, expected ${expected} (diff ${Math.abs(actual - expected)})`,
  );
}

function batchOf(ref: { input_ids: number[][]; attention_mask: number[][] }): TokenBatch {
  const B = ref.input_ids.length, S = ref.input_ids[0].length;
  return {
    batchSize: B,
    seqLen: S,
    ids: Int32Array.from(ref.input_ids.flat()),
    mask: Int32Array.from(ref.attention_mask.flat()),
  };
}

interface PositionRef {
  position: number;
  logits_first64: number[];
  argmax: number;
  logsumexp: number;
  top2_margin: number;
}

function checkPosition(
  stage: Stage,
  features: tf.Tensor2D,
  n: number,
  ref: PositionRef,
  what: string,
) {
  const logits = logitsAt(stage, features, Int32Array.of(n));
  const row = logits.dataSync() as Float32Array;
  for (let v = 0; v < 64; v++) close(row[v], ref.logits_first64[v], `${what} logit ${v}`);
  const lse = tf.logSumExp(logits, 1);
  close(lse.dataSync()[0], ref.logsumexp, `${what} logsumexp`);
  if (ref.top2_margin > 1e-4) {
    assert.equal(tf.argMax(logits, 1).dataSync()[0], ref.argmax, `${what} argmax`);
  }
  tf.dispose([logits, lse]);
}

for (const model of ["tiny-opt", "small-opt"]) {
  const dir = `${FIXTURES}/${model}`;
  Deno.test({
    name: `${model}: right-padded batch matches Hugging Face logits, log-sum-exps and losses`,
    ignore: missing(dir),
    fn: async () => {
      await initBackend("wasm");
      const ref = readJson(`${dir}/reference.json`);
      const ckpt = await openCheckpoint(dir);
      const stage = await loadStage(ckpt, wholeModel(ckpt.config));
      const batch = batchOf(ref.batch);
      const features = stageForward(stage, batch);
      const S = batch.seqLen;
      for (const seq of ref.sequences) {
        const base = seq.index * S;
        checkPosition(
          stage,
          features,
          base + seq.position0.position,
          seq.position0,
          `row ${seq.index} first`,
        );
        checkPosition(stage, features, base + seq.last.position, seq.last, `row ${seq.index} last`);
        const positions = Int32Array.from({ length: seq.length }, (_, s) => base + s);
        const lse = tf.logSumExp(logitsAt(stage, features, positions), 1).dataSync();
        seq.per_position_logsumexp.forEach((e: number, s: number) =>
          close(lse[s], e, `row ${seq.index} logsumexp at ${s}`)
        );
      }
      const { positions, targets, row } = nextTokenTargets(batch);
      const ce = crossEntropyAt(stage, features, positions, targets);
      const perRow = meanPerRow(ce, row, batch.batchSize);
      for (const seq of ref.sequences) {
        close(perRow[seq.index], seq.ce_mean, `row ${seq.index} ce_mean`);
      }
      const total = ce.reduce((a, b) => a + b, 0) / ce.length;
      close(total, ref.batch_loss, "batch_loss");
      features.dispose();
      disposeStage(stage);
    },
  });

  Deno.test({
    name: `${model}: left padding gives the same real-token logits (positions from the mask)`,
    ignore: missing(dir),
    fn: async () => {
      await initBackend("wasm");
      const ref = readJson(`${dir}/reference.json`);
      const ckpt = await openCheckpoint(dir);
      const stage = await loadStage(ckpt, wholeModel(ckpt.config));
      const batch = batchOf(ref.batch_left_padded);
      const features = stageForward(stage, batch);
      for (const seq of ref.batch_left_padded.sequences) {
        const base = seq.index * batch.seqLen;
        checkPosition(
          stage,
          features,
          base + seq.first.position,
          seq.first,
          `row ${seq.index} first`,
        );
        checkPosition(stage, features, base + seq.last.position, seq.last, `row ${seq.index} last`);
        if (seq.length === batch.seqLen) {
          const { positions, targets, row } = nextTokenTargets(batch);
          const perRow = meanPerRow(
            crossEntropyAt(stage, features, positions, targets),
            row,
            batch.batchSize,
          );
          close(perRow[seq.index], seq.ce_mean, `row ${seq.index} ce_mean (no padding)`);
        }
      }
      features.dispose();
      disposeStage(stage);
    },
  });
}

Deno.test({
  name: "tiny-opt: float16 weights are read and upcast to float32 as Hugging Face does",
  ignore: missing(`${FIXTURES}/tiny-opt/model.fp16.safetensors`),
  fn: async () => {
    await initBackend("wasm");
    const dir = `${FIXTURES}/tiny-opt`;
    const ref = readJson(`${dir}/reference.json`);
    const ckpt = await openCheckpoint(dir, `${dir}/model.fp16.safetensors`);
    const stage = await loadStage(ckpt, wholeModel(ckpt.config));
    const batch = batchOf(ref.batch);
    const features = stageForward(stage, batch);
    const { positions, targets, row } = nextTokenTargets(batch);
    const perRow = meanPerRow(
      crossEntropyAt(stage, features, positions, targets),
      row,
      batch.batchSize,
    );
    for (const seq of ref.fp16_weights.sequences) {
      checkPosition(
        stage,
        features,
        seq.index * batch.seqLen + seq.last.position,
        seq.last,
        `fp16 row ${seq.index}`,
      );
      close(perRow[seq.index], seq.ce_mean, `fp16 row ${seq.index} ce_mean`);
    }
    features.dispose();
    disposeStage(stage);
  },
});

Deno.test({
  name: "padBatch pads right by default and left on request",
  fn: () => {
    const right = padBatch([[2, 5], [2]], 1);
    assert.deepEqual([...right.ids], [2, 5, 2, 1]);
    assert.deepEqual([...right.mask], [1, 1, 1, 0]);
    const left = padBatch([[2, 5], [2]], 1, true);
    assert.deepEqual([...left.ids], [2, 5, 1, 2]);
    assert.deepEqual([...left.mask], [1, 1, 0, 1]);
  },
});
