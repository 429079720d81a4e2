/**
 * Faults under `dpzo launch` (issue 6): the launcher repairs what it started. Each run is
 * compared with an uninterrupted embedded run of the same `insecure_seed` (embedded = NATS bit
 * for bit, test/cluster_nats_test.ts):
 *
 * (a) `kill -9` of one worker process mid-run: the launcher starts a replacement by itself (it
 *     takes the free slot and replays the ledger); the same final weights and ledger;
 * (b) the whole launcher process group killed mid-run (a crashed machine: nats-server,
 *     coordinator and workers at once), then `dpzo launch --resume RUN_DIR`: the same final
 *     weights and ledger;
 * (c) `kill -9` of the coordinator process: the launcher restarts it in resume mode and the
 *     workers re-join it; the same final weights and ledger;
 * (d) `kill -9` of the launcher's nats-server: the launcher starts it again on the same port,
 *     store and users, every process reconnects; the same final weights and ledger.
 *
 * The heartbeat timeout is 10 minutes, beyond what these tests allow: a killed worker is noticed
 * by its closed connection within seconds.
 *
 * The launcher runs in its own process group (setsid), so a test can kill all of it at once and
 * always cleans up every process it started.
 */
import { strict as assert } from "node:assert";
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

const skip = lacks("nats-server") || lacks("setsid") || missing(`${FIXTURES}/tiny-opt`) ||
  missing(`${DATA}/sst2`);

const STEPS = 24;
const common = [
  "--config",
  "configs/tiny-sst2.yaml",
  "--quiet",
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
  "cluster.heartbeat_timeout_s=600",
  // Snapshots every 4 steps: a replacement restores the newest one and replays the rest.
  "--set",
  "train.snapshot_every=4",
];

interface Proc {
  name: string;
  child: Deno.ChildProcess;
  output: () => string;
  status: Promise<Deno.CommandStatus>;
}
const procs: Proc[] = [];

/** `dpzo ARGS` as the leader of its own process group (`kill(-pid)` stops all it started). */
function spawn(name: string, ...args: string[]): Proc {
  const child = new Deno.Command("setsid", {
    args: [Deno.execPath(), "run", "-A", MAIN, ...args],
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

/** Kills a process group (the launcher, its nats-server, coordinator and workers). */
function killGroup(p: Proc) {
  try {
    Deno.kill(-p.child.pid, "SIGKILL");
  } catch { /* already gone */ }
}

async function killAll() {
  for (const p of procs.splice(0)) {
    killGroup(p);
    await p.status;
  }
}

async function finished(p: Proc, ms = 120_000): Promise<void> {
  const timer = setTimeout(() => killGroup(p), ms);
  const s = await p.status;
  clearTimeout(timer);
  assert.equal(s.code, 0, `${p.name} failed:\n${p.output().slice(-6000)}`);
}

/** The pid the launcher logged for one of its children ("launch: worker 1 is pid 123"). */
function pidOf(p: Proc, name: string): number | undefined {
  const all = [...p.output().matchAll(new RegExp(`launch: ${name} is pid (\\d+)`, "g"))];
  return all.length ? Number(all[all.length - 1][1]) : undefined;
}

/** The uninterrupted reference run (embedded, the same insecure_seed). */
let reference: { sha: string; ledger: unknown[] } | undefined;
async function referenceRun(tmp: string) {
  if (reference) return reference;
  const p = spawn("embedded", "train", ...common, "--set", `run_dir=${tmp}/reference`);
  await finished(p);
  const s = readJson(`${tmp}/reference/summary.json`);
  reference = { sha: s.final_weights_sha256, ledger: await ledgerOf(`${tmp}/reference`) };
  assert.equal(reference.ledger.length, STEPS);
  return reference;
}

async function assertSameAsReference(tmp: string, dir: string) {
  const ref = await referenceRun(tmp);
  const s = readJson(`${dir}/summary.json`);
  assert.equal(s.final_weights_sha256, ref.sha);
  assert.deepEqual(await ledgerOf(dir), ref.ledger);
}

const launch = (dir: string, name = "launch") =>
  spawn(name, "launch", ...common, "--stages", "2", "--set", `run_dir=${dir}`);

async function withTmp(f: (tmp: string) => Promise<void>) {
  const tmp = await Deno.makeTempDir({ prefix: "dpzo-faults-launch-" });
  try {
    await f(tmp);
  } finally {
    await killAll();
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}

const opts = { ignore: skip, sanitizeResources: false, sanitizeOps: false };

/** A launch whose process `who` is killed (SIGKILL) once 4 steps are released, run to its end. */
async function launchKilling(dir: string, who: string) {
  const l = launch(dir);
  await waitFor("4 ledger lines", async () => (await ledgerLines(dir)) >= 4);
  const pid = pidOf(l, who);
  assert.ok(pid, l.output());
  Deno.kill(pid, "SIGKILL");
  assert.ok((await ledgerLines(dir)) < STEPS, "the run finished before the kill");
  await finished(l);
  return { l, pid, out: l.output() };
}

Deno.test({
  ...opts,
  name: "(a) kill -9 of a worker under dpzo launch: restarted by the launcher, the same weights",
  fn: () =>
    withTmp(async (tmp) => {
      const dir = `${tmp}/a`;
      const { l, pid, out } = await launchKilling(dir, "worker 1");
      assert.match(
        out,
        new RegExp(
          `launch: worker 1 \\(pid ${pid}\\) was killed by SIGKILL; starting a replacement ` +
            `\\(restart 1 of 3\\)`,
        ),
      );
      assert.notEqual(pidOf(l, "worker 1"), pid);
      assert.match(out, /lost: its connection to nats-server closed/);
      assert.match(out, /recovered: every worker at ledger step/);
      await assertSameAsReference(tmp, dir);
    }),
});

Deno.test({
  ...opts,
  name: "(b) the launcher's process group killed mid-run, dpzo launch --resume: the same weights",
  fn: () =>
    withTmp(async (tmp) => {
      const dir = `${tmp}/b`;
      const l = launch(dir);
      await waitFor("4 ledger lines", async () => (await ledgerLines(dir)) >= 4);
      killGroup(l);
      await l.status;
      const killedAt = await ledgerLines(dir);
      assert.ok(killedAt < STEPS, `the run finished before the kill (${killedAt} steps)`);
      // The secrets a resume needs stay in the run directory, readable by the owner only.
      assert.equal(Deno.statSync(`${dir}/nats/launch.json`).mode! & 0o777, 0o600);
      const r = spawn("resumed", "launch", "--resume", dir, "--quiet");
      await finished(r);
      const out = r.output();
      assert.match(out, /JetStream store [^,]*, reused/);
      assert.match(out, new RegExp(`resume: the ledger holds \\d+ of ${STEPS} steps`));
      await assertSameAsReference(tmp, dir);
    }),
});

Deno.test({
  ...opts,
  name: "(c) kill -9 of the coordinator under dpzo launch: resumed, the same weights",
  fn: () =>
    withTmp(async (tmp) => {
      const dir = `${tmp}/c`;
      const { out } = await launchKilling(dir, "coord");
      assert.match(out, /launch: the coordinator \(pid \d+\) was killed by SIGKILL; restarting/);
      assert.match(out, /a new coordinator \(epoch \w+\); joining it again/);
      await assertSameAsReference(tmp, dir);
    }),
});

Deno.test({
  ...opts,
  name:
    "(d) kill -9 of the launcher's nats-server: started again, everyone reconnects, same weights",
  fn: () =>
    withTmp(async (tmp) => {
      const dir = `${tmp}/d`;
      const { l, pid, out } = await launchKilling(dir, "nats-server");
      assert.match(
        out,
        new RegExp(
          `launch: nats-server \\(pid ${pid}\\) was killed by SIGKILL; restarting it on ` +
            `nats://127\\.0\\.0\\.1:\\d+ with the same JetStream store and users`,
        ),
      );
      assert.notEqual(pidOf(l, "nats-server"), pid);
      assert.match(out, /coordinator: reconnected to nats-server/);
      assert.match(out, /worker \S+: reconnected to nats-server/);
      await assertSameAsReference(tmp, dir);
    }),
});
