/**
 * Forward-pass throughput: tokens per second of the OPT forward on the active backend, for
 * small-opt at batch 16 x 64 tokens (the speed fixture), with the LM head at every position
 * (the work of a full-sequence loss) and at only the last position (classification-like).
 *
 *   deno task bench [--model DIR] [--batch 16] [--seq-len 64] [--iters 5] [--backend wasm]
 */
import { parseArgs } from "node:util";
import { type BackendName, describeBackend, initBackend } from "../src/tensor/backend.ts";
import { openCheckpoint } from "../src/model/checkpoint.ts";
import {
  crossEntropyAt,
  nextTokenTargets,
  stageForward,
  type TokenBatch,
  wholeModel,
} from "../src/model/opt.ts";
import { loadStage } from "../src/model/load.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: {
      type: "string",
      default: new URL("../../shared/fixtures/small-opt", import.meta.url).pathname,
    },
    batch: { type: "string", default: "16" },
    "seq-len": { type: "string", default: "64" },
    iters: { type: "string", default: "5" },
    backend: { type: "string", default: "wasm" },
  },
});
const B = Number(values.batch), S = Number(values["seq-len"]), iters = Number(values.iters);
await initBackend(values.backend as BackendName);
console.log(describeBackend());
const ckpt = await openCheckpoint(values.model!);
const stage = await loadStage(ckpt, wholeModel(ckpt.config));
const ids = new Int32Array(B * S);
for (let i = 0; i < ids.length; i++) ids[i] = 4 + Math.floor(Math.random() * 50000);
const batch: TokenBatch = { batchSize: B, seqLen: S, ids, mask: new Int32Array(B * S).fill(1) };
const all = nextTokenTargets(batch);
const lastOnly = {
  positions: Int32Array.from({ length: B }, (_, b) => b * S + S - 2),
  targets: Int32Array.from({ length: B }, (_, b) => ids[b * S + S - 1]),
};

function time(label: string, positions: Int32Array, targets: Int32Array) {
  const run = () => {
    const h = stageForward(stage, batch);
    crossEntropyAt(stage, h, positions, targets);
    h.dispose();
  };
  run();
  const t0 = performance.now();
  for (let i = 0; i < iters; i++) run();
  const s = (performance.now() - t0) / 1000 / iters;
  console.log(
    `${label}: ${s.toFixed(3)} s per forward, ${(B * S / s).toFixed(0)} tokens/s ` +
      `(batch ${B} x ${S} tokens, ${iters} iterations)`,
  );
  return s;
}

const full = time("forward + loss at every position", all.positions, all.targets);
const last = time("forward + loss at the last position", lastOnly.positions, lastOnly.targets);
console.log(JSON.stringify({
  model: values.model,
  backend: values.backend,
  batch: B,
  seq_len: S,
  forward_full_s: full,
  forward_last_s: last,
  tokens_per_s_full: B * S / full,
  tokens_per_s_last: B * S / last,
}));
