/**
 * Faults over a real nats-server (issue 6). Each run is compared with an uninterrupted embedded
 * run of the same `insecure_seed` (embedded = NATS bit for bit, test/cluster_nats_test.ts):
 *
 * (a) `kill -9` of a stage worker mid-run, a replacement started: identical final weights and
 *     ledger (the step in flight is aborted, retried with the same per-step randomness);
 * (b) the coordinator killed mid-run and resumed (`dpzo train --resume DIR --nats URL`): the
 *     workers re-join it; identical weights, ledger and epsilon;
 * (c) nats-server stopped during a run for several seconds, then started again on the same port
 *     and store: every process says which URL it waits for, reconnects, and the run completes
 *     identically, no ledger entry lost;
 * (d) a worker started before its nats-server exists retries instead of exiting.
 *
 * The heartbeat timeout is 10 minutes, far beyond what these tests allow: a killed worker must be
 * noticed by its closed connection, within seconds, not by its silence.
 */
import { strict as assert } from "node:assert";
import { connect } from "@nats-io/transport-node";
import { freePort, type NatsServer, startNatsServer } from "../cluster/nats_server.ts";
import { Assignment, decode, encode, subjects } from "../cluster/protocol.ts";
import { planStages } from "../cluster/stage_plan.ts";
import { openNatsCoordinator } from "../cluster/transport/nats.ts";
import { loadRunConfig } from "../src/dpzo/config.ts";
import { openCheckpoint } from "../src/model/checkpoint.ts";
import {
  DATA,
  FIXTURES,
  lacks,
  ledgerLines,
  ledgerOf,
  missing,
  readJson,
  ROOT,
  waitFor,
} from "./fixtures.ts";

const MAIN = `${ROOT}cluster/main.ts`;

const skip = lacks("nats-server") || missing(`${FIXTURES}/tiny-opt`) || missing(`${DATA}/sst2`);

const STEPS = 16;
const common = [
  "--set",
  `train.steps=${STEPS}`,
  "--set",
  "task.val_examples=8",
  "--set",
  "task.test_examples=8",
  "--set",
  "insecure_seed=7",
  "--set",
  "mode={type: full}",
  "--set",
  "cluster.stages=2",
  "--set",
  "cluster.heartbeat_timeout_s=600",
  // Snapshots every 2 steps: a replacement restores the newest one and replays the rest.
  "--set",
  "train.snapshot_every=2",
];

interface Proc {
  name: string;
  child: Deno.ChildProcess;
  output: () => string;
  status: Promise<Deno.CommandStatus>;
}
const procs: Proc[] = [];

/** `dpzo ARGS` as a direct child (its pid is the process: kill -9 hits it, not a wrapper). */
function spawn(name: string, ...args: string[]): Proc {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  let text = "";
  const pump = async (s: ReadableStream<Uint8Array>) => {
    for await (const chunk of s.pipeThrough(new TextDecoderStream())) text += chunk;
  };
  const pumps = Promise.all([pump(child.stdout), pump(child.stderr)]).catch(() => {});
  const p: Proc = {
    name,
    child,
    output: () => text,
    status: child.status.then(async (s) => {
      await pumps;
      return s;
    }),
  };
  procs.push(p);
  return p;
}

async function killAll() {
  for (const p of procs.splice(0)) {
    try {
      p.child.kill("SIGKILL");
    } catch { /* already gone */ }
    await p.status;
  }
}

async function finished(p: Proc, ms = 120_000): Promise<void> {
  const timer = setTimeout(() => p.child.kill("SIGKILL"), ms);
  const s = await p.status;
  clearTimeout(timer);
  assert.equal(
    s.code,
    0,
    `${p.name} failed:\n${p.output().slice(-4000)}\n` +
      procs.filter((q) => q !== p).map((q) => `--- ${q.name}:\n${q.output().slice(-1500)}`)
        .join("\n"),
  );
}

/** The uninterrupted reference run (embedded, the same insecure_seed). */
let reference: { sha: string; ledger: unknown[]; epsilon: number } | undefined;
async function referenceRun(tmp: string) {
  if (reference) return reference;
  const p = spawn(
    "embedded",
    "train",
    "--config",
    "configs/tiny-sst2.yaml",
    "--quiet",
    ...common,
    "--set",
    `run_dir=${tmp}/reference`,
  );
  await finished(p);
  const s = readJson(`${tmp}/reference/summary.json`);
  reference = {
    sha: s.final_weights_sha256,
    ledger: await ledgerOf(`${tmp}/reference`),
    epsilon: s.epsilon,
  };
  assert.equal(reference.ledger.length, STEPS);
  return reference;
}

async function withServer(
  f: (
    server: NatsServer,
    tmp: string,
    restart: (downMs?: number) => Promise<NatsServer>,
  ) => Promise<void>,
) {
  const tmp = await Deno.makeTempDir({ prefix: "dpzo-faults-" });
  let server = await startNatsServer({ storeDir: `${tmp}/nats` });
  try {
    await f(server, tmp, async (downMs = 0) => {
      const port = server.port;
      await server.stop();
      await new Promise((r) => setTimeout(r, downMs));
      server = await startNatsServer({ storeDir: `${tmp}/nats`, port });
      return server;
    });
  } finally {
    await killAll();
    await server.stop();
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}

function coordinator(url: string, run: string, dir: string): Proc {
  return spawn(
    "coordinator",
    "coordinate",
    "--config",
    "configs/tiny-sst2.yaml",
    "--quiet",
    ...common,
    "--nats",
    url,
    "--run",
    run,
    "--set",
    `run_dir=${dir}`,
  );
}
const worker = (url: string, run: string, name: string) =>
  spawn(name, "worker", "--nats", url, "--run", run, "--id", name);

async function assertSameAsReference(tmp: string, dir: string) {
  const ref = await referenceRun(tmp);
  const s = readJson(`${dir}/summary.json`);
  assert.equal(s.final_weights_sha256, ref.sha);
  assert.deepEqual(await ledgerOf(dir), ref.ledger);
  assert.equal(s.epsilon, ref.epsilon);
}

const opts = { ignore: skip, sanitizeResources: false, sanitizeOps: false };

Deno.test({
  ...opts,
  name: "(b) the coordinator killed mid-run and resumed: same weights, ledger and epsilon",
  fn: () =>
    withServer(async (server, tmp) => {
      const dir = `${tmp}/b`;
      const coord = coordinator(server.url, "fb", dir);
      const workers = [worker(server.url, "fb", "w1"), worker(server.url, "fb", "w2")];
      await waitFor("4 ledger lines", async () => (await ledgerLines(dir)) >= 4);
      coord.child.kill("SIGKILL");
      await coord.status;
      const killedAt = await ledgerLines(dir);
      assert.ok(killedAt < STEPS, `the run finished before the kill (${killedAt} steps)`);
      const resumed = spawn(
        "resumed",
        "train",
        "--resume",
        dir,
        "--nats",
        server.url,
        "--run",
        "fb",
        "--quiet",
      );
      await finished(resumed);
      assert.match(resumed.output(), /resume: the ledger holds \d+ of 16 steps/);
      for (const w of workers) await finished(w, 30_000);
      await assertSameAsReference(tmp, dir);
    }),
});

Deno.test({
  ...opts,
  name: "(a) kill -9 of a stage worker mid-run, a replacement: the same final weights",
  fn: () =>
    withServer(async (server, tmp) => {
      const dir = `${tmp}/a`;
      const coord = coordinator(server.url, "fa", dir);
      const w1 = worker(server.url, "fa", "w1");
      const w2 = worker(server.url, "fa", "w2");
      await waitFor("4 ledger lines", async () => (await ledgerLines(dir)) >= 4);
      w2.child.kill("SIGKILL");
      await w2.status;
      assert.ok((await ledgerLines(dir)) < STEPS, "the run finished before the kill");
      // Until a replacement comes, the coordinator says every few seconds what it waits for.
      await waitFor(
        "the coordinator's waiting line",
        () =>
          /recovering for \d+ s: waiting for group 0 stage \d \(no worker\)/.test(coord.output()),
        30_000,
      );
      const w3 = worker(server.url, "fa", "w3");
      await finished(coord);
      // Noticed by its closed connection (the heartbeat timeout is 10 minutes).
      assert.match(
        coord.output(),
        /worker w2 \(group 0, stage \d\) lost: its connection to nats-server closed/,
      );
      assert.match(coord.output(), /recovered: every worker at ledger step/);
      await finished(w1, 30_000);
      await finished(w3, 30_000);
      await assertSameAsReference(tmp, dir);
    }),
});

Deno.test({
  ...opts,
  name: "(c) nats-server down for 6 s during a run: every process waits for it, the same weights",
  fn: () =>
    withServer(async (server, tmp, restart) => {
      const dir = `${tmp}/c`;
      const coord = coordinator(server.url, "fc", dir);
      const workers = [worker(server.url, "fc", "w1"), worker(server.url, "fc", "w2")];
      await waitFor("4 ledger lines", async () => (await ledgerLines(dir)) >= 4);
      await restart(6000);
      assert.ok((await ledgerLines(dir)) < STEPS, "the run finished before the restart");
      await finished(coord);
      const waiting = (who: string) =>
        new RegExp(`${who}: nats-server at ${server.url} unreachable for \\d+ s; retrying`);
      assert.match(coord.output(), waiting("coordinator"));
      assert.match(coord.output(), /coordinator: reconnected to nats-server at /);
      for (const w of workers) {
        assert.match(w.output(), waiting(`worker ${w.name}`));
        await finished(w, 30_000);
      }
      await assertSameAsReference(tmp, dir);
    }),
});

Deno.test({
  ...opts,
  name: "(d) a worker started before nats-server retries, names the URL, and joins once it is up",
  fn: async () => {
    const tmp = await Deno.makeTempDir({ prefix: "dpzo-faults-early-" });
    const port = freePort();
    const url = `nats://127.0.0.1:${port}`;
    let server: NatsServer | undefined;
    try {
      const w = worker(url, "fd", "w1");
      await waitFor(
        "the worker's waiting line",
        () => Promise.resolve(/w1: nats-server at .* unreachable .* retrying/.test(w.output())),
        20_000,
      );
      server = await startNatsServer({ storeDir: `${tmp}/nats`, port });
      await waitFor(
        "the worker waiting for its coordinator",
        () => Promise.resolve(/waiting for the coordinator of run fd/.test(w.output())),
        20_000,
      );
      assert.match(w.output(), new RegExp(`nats-server at ${url} unreachable`));
      assert.match(w.output(), new RegExp(`worker w1: connected to nats-server at ${url}`));
    } finally {
      await killAll();
      await server?.stop();
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "a worker that says hello before a resumed coordinator has read its ledger replays to it",
  ...opts,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "dpzo-early-hello-" });
    const server = await startNatsServer({ storeDir: `${dir}/nats` });
    const run = "early";
    const config = await loadRunConfig(`${ROOT}configs/tiny-sst2.yaml`, [
      `model=${FIXTURES}/tiny-opt`,
    ]);
    const model = (await openCheckpoint(config.model)).config;
    const transport = await openNatsCoordinator({
      url: server.url,
      run,
      config,
      model,
      plan: planStages(model, 1),
      log: () => {},
      readyTimeoutMs: 3000,
    });
    const nc = await connect({ servers: server.url });
    try {
      // The hello goes out while the coordinator is still opening its ledger ...
      const hello = encode(run, { worker: "w1", host: "test", pid: 1 }, "worker");
      const reply = nc.request(subjects(run).hello, hello, { timeout: 10_000 });
      await new Promise((r) => setTimeout(r, 300));
      // ... which holds 4 steps; nobody becomes ready here, so ready() times out.
      const ready = transport.ready(4).catch(() => {});
      const a = decode((await reply).data, run, Assignment, () => {}, "assignment");
      assert.ok(a?.ok, JSON.stringify(a));
      assert.equal(a.ledger_step, 4);
      await ready;
    } finally {
      await nc.close();
      await transport.close();
      await server.stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
