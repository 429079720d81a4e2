/**
 * The decoders under thousands of random and mutated messages, in process: they never throw,
 * every message they refuse leaves a logged reason, and with a run key nothing without the
 * right tag (or with the wrong sender role) gets through.
 */
import { strict as assert } from "node:assert";
import {
  Chunk,
  decode,
  decodeBlob,
  decodeControl,
  encode,
  encodeBlob,
  encodeControl,
  ForwardPayload,
  forwardPayloadError,
  Hello,
  Reassembler,
  useRunKey,
} from "../cluster/protocol.ts";
import { HOSTILE, mutate, mutateField, pack, rng } from "./fuzz_helpers.ts";

const RUN = "fz";

function validForward(rid: number) {
  const B = 2, S = 3;
  return {
    rid,
    group: 0,
    step: 1,
    micro: 0,
    sign: 1 as const,
    batchSize: B,
    seqLen: S,
    numScores: 2,
    ids: new Uint8Array(new Int32Array(B * S).fill(5).buffer),
    mask: new Uint8Array(new Int32Array(B * S).fill(1).buffer),
    pairPos: new Uint8Array(new Int32Array([2, 5]).buffer),
    pairTok: new Uint8Array(new Int32Array([7, 8]).buffer),
    pairScore: new Uint8Array(new Int32Array([0, 1]).buffer),
  };
}

function fuzzAll(seed: number, n: number) {
  const r = rng(seed);
  const logs: string[] = [];
  const log = (l: string) => logs.push(l);
  const reasm = new Reassembler(64);
  let refused = 0, accepted = 0, acceptedEnvelopes = 0;
  const control = [
    encodeControl(RUN, { type: "step.begin", step: 3, seed: "123", phi: 1e-3 }),
    encodeControl(RUN, { type: "step.update", step: 3, coeff: 1e-3, lr: 1e-3, weight_decay: 0 }),
    encodeControl(RUN, { type: "step.flip", step: 3 }),
  ];
  const hello = encode(RUN, { worker: "w", host: "h", pid: 1 }, "worker");
  const chunk = encode(RUN, { id: "c1", index: 0, count: 1, data: new Uint8Array(9) }, "worker");
  const blob = encodeBlob(validForward(1));
  for (let i = 0; i < n; i++) {
    const before = logs.length;
    const kind = r.int(6);
    let out: unknown;
    assert.doesNotThrow(() => {
      if (kind === 0) out = decodeControl(r.bytes(r.int(80)), RUN, log);
      else if (kind === 1) out = decodeControl(mutate(r, r.pick(control)), RUN, log);
      else if (kind === 2) out = decode(mutate(r, hello), RUN, Hello, log, "hello", "worker");
      else if (kind === 3) {
        const c = decode(mutate(r, chunk), RUN, Chunk, log, "chunk", "worker");
        out = c;
        if (c) {
          try {
            reasm.add(c);
          } catch (e) {
            log(`chunk: ${(e as Error).message}`);
          }
        }
      } else if (kind === 4) out = decodeBlob(mutate(r, blob), ForwardPayload, log, "forward");
      else {
        const f = mutateField(r, validForward(2));
        out = decodeBlob(pack(f), ForwardPayload, log, "forward");
      }
    });
    if (out === null) {
      refused++;
      assert.ok(logs.length > before, `case ${i} (kind ${kind}) refused without a reason`);
    } else {
      accepted++;
      // Blobs (kinds 4, 5) travel inside tagged chunks; everything else is tagged itself.
      if (kind < 4) acceptedEnvelopes++;
    }
  }
  return { refused, accepted, acceptedEnvelopes, logs };
}

Deno.test("decoders survive random and mutated messages, and log every refusal", () => {
  const { refused, accepted } = fuzzAll(1, 6000);
  assert.ok(refused > 4000, `${refused} refused`);
  assert.ok(accepted > 0, "some mutations stay valid (e.g. a flipped bit in a float)");
});

Deno.test("with a run key nothing untagged or mistagged gets through", () => {
  useRunKey(RUN, new Uint8Array(32).fill(7));
  try {
    // Messages tagged by this key are accepted; every mutation of them is refused.
    const ok = encodeControl(RUN, { type: "step.flip", step: 3 });
    assert.deepEqual(decodeControl(ok, RUN, () => {}), { type: "step.flip", step: 3 });
    const { acceptedEnvelopes, logs } = fuzzAll(2, 3000);
    assert.equal(acceptedEnvelopes, 0);
    assert.ok(logs.some((l) => /authentication tag/.test(l)));
    // A worker's tag on a coordinator message: refused (sender role).
    const w = encode(RUN, {}, "worker");
    const logs2: string[] = [];
    assert.equal(decode(w, RUN, Hello, (l) => logs2.push(l), "shutdown", "coordinator"), null);
    assert.match(logs2[0], /not from a coordinator/);
  } finally {
    useRunKey(RUN, null);
  }
});

Deno.test("forward payloads are checked against the model before any tensor is made", () => {
  const model = { vocabSize: 50, hiddenSize: 8, maxPositions: 16 };
  const p = ForwardPayload.parse(validForward(1));
  assert.equal(forwardPayloadError(p, model, false), null);
  assert.match(forwardPayloadError(p, model, true)!, /activations missing/);
  const bigTok = { ...p, ids: new Uint8Array(new Int32Array(6).fill(99).buffer) };
  assert.match(forwardPayloadError(bigTok, model, false)!, /token id 99/);
  assert.match(forwardPayloadError({ ...p, seqLen: 40, batchSize: 1 }, model, false)!, /40/);
  // Inconsistent shapes do not even pass the schema.
  const logs: string[] = [];
  const bad = { ...validForward(1), batchSize: 1e6 };
  assert.equal(decodeBlob(pack(bad), ForwardPayload, (l) => logs.push(l), "forward"), null);
  assert.match(logs[0], /bytes|tokens/);
  for (const v of HOSTILE) {
    assert.equal(
      decodeBlob(pack({ ...validForward(1), pairScore: v }), ForwardPayload, () => {}, "f"),
      null,
    );
  }
});

Deno.test("the reassembler keeps a bounded number of incomplete payloads", () => {
  const r = new Reassembler(8);
  for (let i = 0; i < 100; i++) r.add({ id: `x${i}`, index: 0, count: 2, data: new Uint8Array(1) });
  assert.equal(r.pending, 8);
  assert.throws(() => r.add({ id: "y", index: 0, count: 1e9, data: new Uint8Array(1) }));
});
