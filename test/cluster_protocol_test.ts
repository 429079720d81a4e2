/**
 * The wire protocol of a sharded run: invalid messages are logged and dropped (never thrown),
 * control tuples round-trip, payloads chunk and reassemble, float16 rounds as IEEE, stage plans
 * are contiguous and balanced, and Slurm tasks map to roles.
 */
import { strict as assert } from "node:assert";
import { pack } from "msgpackr";
import {
  Chunk,
  chunkPayload,
  type ControlMessage,
  decode,
  decodeControl,
  encode,
  encodeControl,
  fromFloat16,
  Reassembler,
  toFloat16,
} from "../cluster/protocol.ts";
import { planStages } from "../cluster/stage_plan.ts";
import { firstHost, slurmRole } from "../cluster/launcher.ts";
import { openCheckpoint } from "../src/model/checkpoint.ts";
import { FIXTURES, missing } from "./fixtures.ts";

Deno.test("control messages round-trip and stay small", () => {
  const msgs: ControlMessage[] = [
    { type: "step.begin", step: 3, seed: "18446744073709551615", phi: 1e-3 },
    { type: "step.flip", step: 3 },
    { type: "step.update", step: 3, coeff: 0.00099812, lr: 1e-3, weight_decay: 0 },
    { type: "step.abort", step: 3 },
  ];
  const logs: string[] = [];
  let bytes = 0;
  for (const m of msgs) {
    const data = encodeControl("tiny-sst2", m);
    if (m.type !== "step.abort") bytes += data.byteLength;
    assert.deepEqual(decodeControl(data, "tiny-sst2", (l) => logs.push(l)), m);
  }
  assert.deepEqual(logs, []);
  assert.ok(bytes <= 120, `a step's parameter sync is ${bytes} bytes`);
});

Deno.test("invalid messages are logged and dropped, never thrown", () => {
  const logs: string[] = [];
  const log = (l: string) => logs.push(l);
  const ok = encodeControl("r", { type: "step.flip", step: 1 });
  assert.equal(decodeControl(new Uint8Array([0xc1, 0xff, 0x00]), "r", log), null);
  assert.equal(decodeControl(pack({ hello: 1 }), "r", log), null);
  assert.equal(decodeControl(pack([99, "r", 2, 1]), "r", log), null);
  assert.equal(decodeControl(ok, "other-run", log), null);
  assert.equal(decodeControl(pack([1, "r", 1, 1, "not-a-seed", 0.001]), "r", log), null);
  assert.equal(decodeControl(pack([1, "r", 9, 1]), "r", log), null);
  assert.equal(logs.length, 6);
  assert.match(logs[0], /not msgpack/);
  assert.match(logs[2], /protocol version 99/);
  assert.match(logs[3], /run r, this process serves other-run/);
  assert.match(logs[4], /seed/);
  logs.length = 0;
  assert.equal(decode(new Uint8Array([0xc1]), "r", Chunk, log, "chunk"), null);
  assert.equal(decode(encode("r", { id: "x", index: -1 }), "r", Chunk, log, "chunk"), null);
  assert.equal(decode(pack({ v: 2, run: "r", body: {} }), "r", Chunk, log, "chunk"), null);
  assert.equal(logs.length, 3);
  assert.match(logs[2], /protocol version 2/);
});

Deno.test("payloads chunk under a size limit and reassemble in any order", () => {
  const payload = new Uint8Array(10_000).map((_, i) => i * 7);
  const chunks = chunkPayload("p1", payload, 3000);
  assert.equal(chunks.length, 4);
  assert.ok(chunks.every((c) => c.data.byteLength <= 3000));
  const r = new Reassembler();
  let out: Uint8Array | null = null;
  for (const c of [chunks[2], chunks[0], chunks[3], chunks[1]]) out = r.add(c) ?? out;
  assert.deepEqual(out, payload);
  assert.equal(r.pending, 0);
});

Deno.test("float16 on the wire rounds to nearest even", () => {
  const x = new Float32Array([
    0,
    -0,
    1,
    -2.5,
    65504,
    70000,
    1e-8,
    6.1e-5,
    1 + 2 ** -11,
    1 + 3 * 2 ** -11,
    NaN,
  ]);
  const y = fromFloat16(toFloat16(x));
  assert.deepEqual(
    Array.from(y).slice(0, 6),
    [0, -0, 1, -2.5, 65504, Infinity],
  );
  assert.equal(y[6], 0);
  assert.ok(Math.abs(y[7] - 6.1e-5) < 1e-7);
  assert.equal(y[8], 1, "ties go to even");
  assert.equal(y[9], 1 + 2 * 2 ** -10);
  assert.ok(Number.isNaN(y[10]));
});

Deno.test({
  name: "stage plans are contiguous, cover every layer and balance parameters",
  ignore: missing(`${FIXTURES}/small-opt`),
  fn: async () => {
    const model = (await openCheckpoint(`${FIXTURES}/small-opt`)).config;
    for (const K of [1, 2, 3, 4]) {
      const plan = planStages(model, K);
      assert.equal(plan.ranges[0].firstLayer, 0);
      assert.equal(plan.ranges[K - 1].endLayer, model.numLayers);
      plan.ranges.forEach((r, k) => {
        assert.ok(r.endLayer > r.firstLayer);
        if (k > 0) assert.equal(r.firstLayer, plan.ranges[k - 1].endLayer);
        assert.equal(r.embeddings, k === 0);
        assert.equal(r.head, k === K - 1);
      });
    }
    // small-opt: the embeddings (~13M) outweigh a layer (~0.8M): 2 stages split 2 + 2 layers,
    // each end holding a copy of the tied embedding matrix.
    const two = planStages(model, 2);
    assert.deepEqual(two.ranges.map((r) => [r.firstLayer, r.endLayer]), [[0, 2], [2, 4]]);
    assert.throws(() => planStages(model, 5), /at most 4/);
  },
});

Deno.test("Slurm tasks map to coordinator, workers and idle tasks", () => {
  assert.equal(firstHost("gpu[03-05,07],cpu1"), "gpu03");
  assert.equal(firstHost("node7"), "node7");
  const env = (p: number, n = 6) => ({ SLURM_PROCID: String(p), SLURM_NTASKS: String(n) });
  assert.equal(slurmRole(env(0), 4).role, "coordinator");
  assert.equal(slurmRole(env(1), 4).role, "worker");
  assert.equal(slurmRole(env(4), 4).role, "worker");
  assert.equal(slurmRole(env(5), 4).role, "idle");
  assert.throws(() => slurmRole(env(0, 4), 4), /need 5 tasks/);
  assert.throws(() => slurmRole({}, 4), /SLURM_PROCID/);
});
