/**
 * Stage workers: a perturbation really changes the forward pass (the WASM backend's packed
 * weights trap), the step's passes restore the weights when ghat = 0, control messages out of
 * order are refused, and in LoRA mode only the LoRA tensors move.
 */
import { strict as assert } from "node:assert";
import { initBackend } from "../src/tensor/backend.ts";
import { openCheckpoint } from "../src/model/checkpoint.ts";
import { stageParameters, wholeModel } from "../src/model/opt.ts";
import { loadStage } from "../src/model/load.ts";
import { attachLora } from "../src/dpzo/lora.ts";
import { createStageWorker, forwardStage, handleControl, stageDigests } from "../cluster/worker.ts";
import { packRequests } from "../cluster/coordinator.ts";
import { FIXTURES, missing } from "./fixtures.ts";

const TINY = `${FIXTURES}/tiny-opt`;

function request() {
  const examples = [
    {
      rows: [{
        ids: [2, 100, 200, 300],
        scores: [{ positions: [3], tokens: [5] }, { positions: [3], tokens: [6] }],
      }],
      label: 0,
    },
    { rows: [{ ids: [2, 7, 8], scores: [{ positions: [1, 2], tokens: [8, 9] }] }], label: 0 },
  ];
  return packRequests(examples, 4, 1, 1, 0, 1);
}

Deno.test({
  name: "a perturbation changes the output, and +phi, -2 phi, +phi restores the weights",
  ignore: missing(TINY),
  fn: async () => {
    await initBackend("wasm");
    const ckpt = await openCheckpoint(TINY);
    const stage = await loadStage(ckpt, wholeModel(ckpt.config));
    const names = stageParameters(ckpt.config, stage.range).map((s) => s.name);
    const w = createStageWorker(stage, names);
    const before = forwardStage(w, request()).result!.scores;
    const digests = stageDigests(w);
    handleControl(w, { type: "step.begin", step: 1, seed: "12345", phi: 0.01 });
    const plus = forwardStage(w, request()).result!.scores;
    assert.notDeepEqual(plus, before, "the + perturbation is visible to the forward pass");
    handleControl(w, { type: "step.flip", step: 1 });
    const minus = forwardStage(w, request()).result!.scores;
    assert.notDeepEqual(minus, plus);
    handleControl(w, { type: "step.update", step: 1, coeff: 0.01, lr: 0, weight_decay: 0 });
    const after = forwardStage(w, request()).result!.scores;
    for (let i = 0; i < after.length; i++) assert.ok(Math.abs(after[i] - before[i]) < 1e-5);
    // Out of order: a second update, a begin that skips a step, a flip with no begin.
    assert.throws(
      () => handleControl(w, { type: "step.update", step: 1, coeff: 1, lr: 0, weight_decay: 0 }),
      /out of order/,
    );
    assert.throws(
      () => handleControl(w, { type: "step.begin", step: 3, seed: "1", phi: 0.01 }),
      /out of order/,
    );
    assert.throws(() => handleControl(w, { type: "step.flip", step: 2 }), /out of order/);
    // Abort after begin and flip returns the weights (up to float32 rounding) and the state.
    handleControl(w, { type: "step.begin", step: 2, seed: "99", phi: 0.01 });
    handleControl(w, { type: "step.flip", step: 2 });
    handleControl(w, { type: "step.abort", step: 2 });
    assert.equal(w.phase, "idle");
    assert.equal(w.appliedStep, 1);
    assert.equal(stageDigests(w).size, digests.size);
  },
});

Deno.test({
  name: "LoRA: starts at the base model and perturbs only the LoRA tensors",
  ignore: missing(TINY),
  fn: async () => {
    await initBackend("wasm");
    const ckpt = await openCheckpoint(TINY);
    const stage = await loadStage(ckpt, wholeModel(ckpt.config));
    const base = createStageWorker(stage, []);
    const baseScores = forwardStage(base, request()).result!.scores;
    const specs = attachLora(stage, { rank: 4, alpha: 8, initSeed: 0 });
    assert.equal(specs.length, 2 * 2 * 2, "A and B for q_proj and v_proj of 2 layers");
    const w = createStageWorker(stage, specs.map((s) => s.name));
    assert.deepEqual(
      forwardStage(w, request()).result!.scores,
      baseScores,
      "B = 0: output unchanged",
    );
    const before = stageDigests(w);
    handleControl(w, { type: "step.begin", step: 1, seed: "777", phi: 0.01 });
    handleControl(w, { type: "step.flip", step: 1 });
    handleControl(w, { type: "step.update", step: 1, coeff: 0.5, lr: 0.1, weight_decay: 0 });
    const after = stageDigests(w);
    for (const [name, d] of before) {
      if (name.includes(".lora_")) assert.notEqual(after.get(name), d, `${name} moved`);
      else assert.equal(after.get(name), d, `${name} untouched`);
    }
    assert.notDeepEqual(forwardStage(w, request()).result!.scores, baseScores);
  },
});
