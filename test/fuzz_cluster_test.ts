/**
 * Thousands of random and mutated messages on every subject of a running K = 2 run (nats-server
 * without permissions, so that the fuzzer's messages reach the decoders): the coordinator and
 * both workers keep running, drop and log what they refuse, and the run ends with the same
 * final_weights_sha256 as the same run (insecure_seed) embedded.
 *
 * The fuzzer knows the run key (DPZO_RUN_KEY), so besides random bytes and messages with a
 * broken tag it sends correctly tagged messages with mutated or hostile contents, which go
 * through the schema checks, the step state machine and the request matching: control tuples
 * of far-away steps, forward chunks that are not whole or do not fit the model, results of
 * requests nobody made, hellos/readies/heartbeats of unknown workers. Messages that an insider
 * could legitimately send (a shutdown, an abort, the coordinator's heartbeat) are sent only
 * untagged.
 */
import { strict as assert } from "node:assert";
import { connect } from "@nats-io/transport-node";
import { startNatsServer } from "../cluster/nats_server.ts";
import { encodeBlob, subjects } from "../cluster/protocol.ts";
import { DATA, FIXTURES, lacks, missing, readJson, ROOT } from "./fixtures.ts";
import { HOSTILE, mutate, mutateField, pack, rng, tag } from "./fuzz_helpers.ts";

const RUN = "fuzz";
const KEY = new Uint8Array(32).map((_, i) => i * 7 + 1);
const KEY_HEX = [...KEY].map((b) => b.toString(16).padStart(2, "0")).join("");

const common = [
  "--config",
  "configs/tiny-sst2.yaml",
  "--quiet",
  "--set",
  "train.steps=8",
  "--set",
  "task.val_examples=4",
  "--set",
  "task.test_examples=4",
  "--set",
  "insecure_seed=11",
];

/** The fuzz cases for one message: [subject, bytes]. */
function fuzzCase(r: ReturnType<typeof rng>, i: number): [string, Uint8Array] {
  const S = subjects(RUN);
  const env = (from: "coordinator" | "worker", body: unknown) =>
    pack({ v: 1, run: RUN, from, body });
  const far = 1000 + r.int(1000) * 7; // never a step of this 8-step run, even after one mutation
  const fwd = {
    rid: 1_000_000 + i,
    group: 0,
    step: far,
    micro: 0,
    sign: 1,
    batchSize: 1,
    seqLen: 4,
    numScores: 1,
    ids: new Uint8Array(new Int32Array([2, 3, 4, 5]).buffer),
    mask: new Uint8Array(new Int32Array([1, 1, 1, 1]).buffer),
    pairPos: new Uint8Array(new Int32Array([3]).buffer),
    pairTok: new Uint8Array(new Int32Array([6]).buffer),
    pairScore: new Uint8Array(new Int32Array([0]).buffer),
  };
  const chunkOf = (blob: Uint8Array, count = 1) => ({
    id: `fz${i}`,
    index: 0,
    count,
    data: blob,
  });
  // [subject, sender role, plaintext] of insider-shaped messages.
  const insiders: [string, "coordinator" | "worker", () => Uint8Array][] = [
    [S.control, "coordinator", () => pack([1, RUN, 1 + r.int(3), far, "12345", 0.001])],
    [S.control, "coordinator", () => pack([1, RUN, 3, far, r.pick(HOSTILE), 1e-3, 0])],
    [S.control, "coordinator", () => pack([1, RUN, 1, r.pick(HOSTILE), "1", 0.001])],
    [S.forward(0, 0), "coordinator", () => env("coordinator", chunkOf(encodeBlob(fwd)))],
    [S.forward(0, 0), "coordinator", () => env("coordinator", chunkOf(pack(mutateField(r, fwd))))],
    [S.forward(0, 0), "coordinator", () => env("coordinator", chunkOf(encodeBlob(fwd), 3))],
    [
      S.forward(0, 1),
      "worker",
      () => env("worker", chunkOf(pack({ ...fwd, hidden: r.bytes(64) }))),
    ],
    [
      S.result,
      "worker",
      () =>
        env("worker", chunkOf(pack({ rid: fwd.rid, worker: "fz", step: far, micro: 0, sign: 1 }))),
    ],
    [
      S.result,
      "worker",
      () =>
        env(
          "worker",
          chunkOf(pack({ rid: r.int(40), worker: "fz", step: far, micro: 0, sign: 1 })),
        ),
    ],
    [S.ready, "worker", () => env("worker", { worker: `fz${i}`, ok: false, error: "fuzz" })],
    [S.heartbeat, "worker", () => env("worker", { worker: `fz${i}` })],
    [S.query, "coordinator", () => env("coordinator", { type: r.pick(["stats", "x", 1]) })],
  ];
  const outsiders = [S.shutdown, `dpzo.${RUN}.coordinator`, S.hello, ...insiders.map(([s]) => s)];
  switch (r.int(4)) {
    case 0: // random bytes anywhere
      return [r.pick(outsiders), r.bytes(r.int(200))];
    case 1: { // an insider message with its tag broken
      const [subject, role, make] = r.pick(insiders);
      return [
        r.pick([subject, S.shutdown, `dpzo.${RUN}.coordinator`]),
        mutate(r, tag(KEY, role, make())),
      ];
    }
    case 2: { // an insider message mutated, then tagged: past the tag, into the schemas
      const [subject, role, make] = r.pick(insiders);
      return [subject, tag(KEY, role, mutate(r, make()))];
    }
    default: { // an insider message with hostile contents, tagged
      const [subject, role, make] = r.pick(insiders);
      return [subject, tag(KEY, role, make())];
    }
  }
}

Deno.test({
  name: "fuzzed messages on every subject leave a running K=2 run unchanged",
  ignore: lacks("nats-server") || missing(`${FIXTURES}/tiny-opt`) || missing(`${DATA}/sst2`),
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "dpzo-fuzz-" });
    const server = await startNatsServer({ storeDir: `${dir}/nats`, maxPayload: 64 * 1024 });
    const nc = await connect({ servers: server.url });
    try {
      const embedded = await new Deno.Command(Deno.execPath(), {
        args: ["task", "--quiet", "dpzo", "train", ...common, "--set", `run_dir=${dir}/embedded`],
        cwd: ROOT,
        stdout: "null",
        stderr: "piped",
      }).output();
      assert.equal(embedded.code, 0, new TextDecoder().decode(embedded.stderr));

      const child = new Deno.Command(Deno.execPath(), {
        args: [
          "task",
          "--quiet",
          "dpzo",
          "launch",
          ...common,
          "--stages",
          "2",
          "--run",
          RUN,
          "--nats",
          server.url,
          "--set",
          `run_dir=${dir}/fuzzed`,
        ],
        cwd: ROOT,
        env: { DPZO_RUN_KEY: KEY_HEX },
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const timer = setTimeout(() => child.kill("SIGTERM"), 150_000);
      let stderr = "";
      let ready!: () => void;
      const allReady = new Promise<void>((res) => (ready = res));
      const pump = (async () => {
        for await (const t of child.stderr.pipeThrough(new TextDecoderStream())) {
          stderr += t;
          if (/all 2 workers ready/.test(stderr)) ready();
        }
      })();
      const stdout = new Response(child.stdout).text();
      let exited = false;
      const status = child.status.then((s) => {
        exited = true;
        ready();
        return s;
      });

      await allReady;
      const r = rng(2024);
      let sent = 0;
      while (!exited && sent < 5_000) {
        for (let k = 0; k < 100; k++, sent++) nc.publish(...fuzzCase(r, sent));
        await nc.flush();
        await new Promise((res) => setTimeout(res, 5));
      }
      const s = await status;
      clearTimeout(timer);
      await pump;
      const out = await stdout;
      assert.equal(s.code, 0, stderr.slice(-4000));
      assert.ok(sent >= 2000, `only ${sent} fuzz messages went out during the run`);
      const e = readJson(`${dir}/embedded/summary.json`);
      const f = readJson(`${dir}/fuzzed/summary.json`);
      assert.equal(f.final_weights_sha256, e.final_weights_sha256);
      assert.match(out, new RegExp(`final_weights_sha256: ${e.final_weights_sha256}`));
      // Both sides dropped messages and said why.
      assert.match(stderr, /coord +\| protocol: dropped/);
      assert.match(stderr, /worker 0 \| protocol: dropped/);
      assert.match(stderr, /worker 1 \| protocol: dropped/);
      assert.match(stderr, /bad authentication tag/);
      console.log(`${sent} fuzz messages during the run`);
    } finally {
      await nc.close();
      await server.stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
