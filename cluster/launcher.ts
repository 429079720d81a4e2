/**
 * `dpzo launch`: one command for a sharded run. Starts `nats-server` when no URL is given (a
 * free loopback port, JetStream on, its store in the run directory), then the coordinator and
 * K x R stage workers as processes of this machine, prefixes their log lines, and stops them
 * all on Ctrl-C or when the run fails. A worker process that dies is started again (a bounded
 * number of times per slot), a coordinator killed by a signal is restarted from the ledger, the
 * launcher's nats-server is restarted on the same port and store, and `dpzo launch --resume
 * RUN_DIR` continues a launch whose machine went down. Under Slurm (`--slurm`) each task takes
 * one role.
 *
 * The coordinator process is `prepareRun` + `coordinateRun` over the NATS transport: the same
 * coordinator as `dpzo train`, only the transport differs.
 */
import { z } from "zod";
import type { RunConfig } from "../src/dpzo/config.ts";
import { formatZodError } from "../src/validation.ts";
import {
  coordinateRun,
  NATS_STORE_DIR,
  prepareRun,
  readRunConfig,
  resumeRunContext,
  type RunContext,
  type RunSummary,
  type TrainOptions,
} from "./run.ts";
import { StreamLedger } from "./ledger_stream.ts";
import { planStages } from "./stage_plan.ts";
import { localWorkerThreads } from "./plan.ts";
import { openNatsCoordinator } from "./transport/nats.ts";
import { retryTransient } from "./nats_connect.ts";
import { freePort, type NatsServer, pumpLines, startNatsServer } from "./nats_server.ts";
import {
  installRunKey,
  localUsers,
  type NatsSecurity,
  securityEnv,
  toHex,
} from "./nats_security.ts";
import { newRunKey } from "./protocol.ts";
import { RunInterrupted, unlessStopped } from "./interruption.ts";

/** The default run id: the run directory's name, made a valid NATS subject token. */
export function defaultRunId(config: RunConfig): string {
  const base = config.run_dir.replace(/\/+$/, "").split("/").pop() || "run";
  return base.replace(/[^A-Za-z0-9_-]/g, "_").slice(0, 64);
}

export interface CoordinateOptions extends TrainOptions {
  url: string;
  run: string;
  readyTimeoutMs?: number;
  heartbeatTimeoutMs?: number;
  maxChunkBytes?: number;
  /** TLS, credentials and the run key (README "Security"). */
  security?: NatsSecurity;
}

/** The coordinator of a sharded run: waits for its K x R workers, trains, writes the summary. */
export async function coordinateOverNats(
  config: RunConfig,
  opts: CoordinateOptions,
): Promise<RunSummary> {
  const log = opts.log ?? ((l: string) => console.error(l));
  installRunKey(opts.run, opts.security ?? {});
  return await coordinateContext(await prepareRun(config, { ...opts, log }), { ...opts, log });
}

/**
 * The coordinator of a sharded run resumed from its run directory (`dpzo train --resume DIR
 * --nats URL`, `dpzo coordinate --resume DIR`): the ledger (stream and file reconciled) gives the
 * step counter and the epsilon spent; workers still running re-join and replay what they miss,
 * new ones load their slice and replay the whole ledger.
 */
export async function resumeOverNats(
  runDir: string,
  opts: Omit<CoordinateOptions, "run"> & { run?: string },
): Promise<RunSummary> {
  const log = opts.log ?? ((l: string) => console.error(l));
  const run = opts.run ?? defaultRunId(await readRunConfig(runDir));
  installRunKey(run, opts.security ?? {});
  const ctx = await resumeRunContext(runDir, { ...opts, log });
  return await coordinateContext(ctx, { ...opts, run, log });
}

async function coordinateContext(
  ctx: RunContext,
  opts: CoordinateOptions & { log: (l: string) => void },
): Promise<RunSummary> {
  const { config } = ctx;
  const log = opts.log;
  const { stages, replicas } = config.cluster;
  const plan = planStages(ctx.model, stages, replicas);
  log(
    `coordinator: run ${opts.run} on ${opts.url}: ${stages} stage(s) x ${replicas} replica group(s); ` +
      plan.ranges.map((r, k) =>
        `stage ${k}: layers ${r.firstLayer}..${r.endLayer - 1}${r.embeddings ? " +emb" : ""}${
          r.head ? " +head" : ""
        } (${(plan.parameters[k] / 1e6).toFixed(2)}M)`
      ).join(", "),
  );
  const transport = await openNatsCoordinator({
    url: opts.url,
    run: opts.run,
    config,
    model: ctx.model,
    plan,
    log,
    readyTimeoutMs: opts.readyTimeoutMs,
    heartbeatTimeoutMs: opts.heartbeatTimeoutMs ?? config.cluster.heartbeat_timeout_s * 1000,
    maxChunkBytes: opts.maxChunkBytes,
    security: opts.security,
  });
  let ledger: StreamLedger | undefined;
  try {
    // The ledger is the run's JetStream stream (acknowledged before release) and ledger.jsonl.
    const opened = await retryTransient(
      () =>
        StreamLedger.open(
          transport.connection,
          opts.run,
          `${config.run_dir}/ledger.jsonl`,
          { resume: ctx.resume === true, log },
        ),
      "coordinator: opening the ledger stream",
      log,
    );
    ledger = opened.ledger;
    // Ctrl-C while waiting for the workers: nothing of the run has changed.
    const done = opened.entries.length;
    await unlessStopped(transport.ready(done), opts.interrupt, done, ctx.schedule.steps)
      .catch((e) => {
        if (!(e instanceof RunInterrupted)) throw e;
        const eps = ctx.plan ? (done ? ctx.plan.epsilonAt(done).epsilon : 0) : null;
        throw new RunInterrupted(done, ctx.schedule.steps, eps, opts.continueWith ?? "");
      });
    log(
      `coordinator: all ${stages * replicas} workers ready` +
        (opened.entries.length ? ` at ledger step ${opened.entries.length}` : ""),
    );
    return await coordinateRun(ctx, transport, {
      ...opts,
      ledger: { sink: opened.ledger, entries: opened.entries },
    });
  } finally {
    ledger?.close();
    await transport.close();
  }
}

const MAIN = new URL("./main.ts", import.meta.url).pathname;
/**
 * launchLocal's exit code when Ctrl-C stopped the run before its coordinator could say where
 * (130 when it did: it printed its "interrupted at step N" line).
 */
export const INTERRUPTED_AT_ONCE = 131;
/**
 * What a dpzo process runs with: its permissions, and V8's young generation capped at 1 MiB per
 * semi-space (the default 16 MiB ones held ~70 MiB of RSS on small-opt for no speed gain; the
 * hot path allocates in the WASM heap, not in JS). `deno task dpzo` uses the same.
 */
export const DPZO_RUNTIME_FLAGS = [
  "--v8-flags=--max-semi-space-size=1",
  "--allow-read",
  "--allow-write",
  "--allow-env",
  "--allow-net",
  "--allow-run",
  "--allow-sys",
  "--allow-ffi",
];

interface Child {
  name: string;
  proc: Deno.ChildProcess;
  status: Promise<Deno.CommandStatus>;
  done: boolean;
  /**
   * Its exit has been dealt with. Not the same as `done`: two processes may end at once (a
   * double fault), and the one not handled first must still be seen by the next round.
   */
  handled: boolean;
  pumps: Promise<unknown>;
}

export interface LaunchOptions {
  /** Config file and `--set` overrides, passed on to the coordinator process. */
  configPath: string;
  sets: string[];
  config: RunConfig;
  run?: string;
  nats?: string;
  /**
   * Resume the run of `config.run_dir` (`dpzo launch --resume RUN_DIR`): its nats-server store,
   * credentials and run key (RUN_DIR/nats/launch.json), a coordinator in resume mode and fresh
   * workers that replay the ledger. `configPath` and `sets` are not used.
   */
  resume?: boolean;
  /** How often each worker slot is restarted after its process died (default 3). */
  maxRestarts?: number;
  /**
   * With `nats`: how the coordinator (and, without `workerSecurity`, the workers) connect.
   * Without: ignored; the launcher's own server gets throw-away users (see `launchLocal`).
   */
  security?: NatsSecurity;
  /** With `nats`: how the workers connect, when it differs from the coordinator. */
  workerSecurity?: NatsSecurity;
  quiet?: boolean;
  /** Where prefixed log lines go (default stderr) and the coordinator's stdout (default stdout). */
  log?: (line: string) => void;
  out?: (line: string) => void;
}

/** What a launch keeps to be resumed (RUN_DIR/nats/launch.json, mode 0600: it holds secrets). */
const LaunchState = z.object({
  format: z.literal("dpzo-launch/1"),
  run: z.string(),
  runKey: z.string(),
  /** The port of the launcher's nats-server (absent with --nats). */
  port: z.number().int().positive().optional(),
  users: z.object({
    coordinator: z.object({ user: z.string(), password: z.string() }),
    worker: z.object({ user: z.string(), password: z.string() }),
  }).optional(),
});
type LaunchState = z.infer<typeof LaunchState>;
export const LAUNCH_STATE_FILE = "launch.json";

async function readLaunchState(runDir: string): Promise<LaunchState | null> {
  const path = `${runDir}/${NATS_STORE_DIR}/${LAUNCH_STATE_FILE}`;
  let text;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new Error(`${path}: not valid JSON`);
  }
  const parsed = LaunchState.safeParse(raw);
  if (!parsed.success) throw new Error(`${path}: ${formatZodError(parsed.error)}`);
  return parsed.data;
}

async function writeLaunchState(runDir: string, state: LaunchState): Promise<void> {
  const dir = `${runDir}/${NATS_STORE_DIR}`;
  await Deno.mkdir(dir, { recursive: true });
  const path = `${dir}/${LAUNCH_STATE_FILE}`, tmp = `${path}.tmp-${Deno.pid}`;
  await Deno.writeTextFile(tmp, JSON.stringify(state, null, 2) + "\n", { mode: 0o600 });
  await Deno.chmod(tmp, 0o600).catch(() => {});
  await Deno.rename(tmp, path);
}

function portIsFree(port: number): boolean {
  try {
    Deno.listen({ hostname: "127.0.0.1", port }).close();
    return true;
  } catch {
    return false;
  }
}

/**
 * Starts the launcher's nats-server again, retrying for a while: its port may still be held for
 * a moment by the dead server's sockets.
 */
async function restartServer(
  start: () => Promise<NatsServer>,
  log: (line: string) => void,
): Promise<NatsServer> {
  const deadline = Date.now() + 30_000;
  for (let attempt = 1;; attempt++) {
    try {
      return await start();
    } catch (e) {
      if (Date.now() > deadline) throw e;
      if (attempt === 1) log(`launch: nats-server did not start again yet; retrying`);
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

/** "killed by SIGKILL" / "exited with code 3". */
function describeExit(s: Deno.CommandStatus): string {
  return s.signal ? `was killed by ${s.signal}` : `exited with code ${s.code}`;
}

/**
 * Runs a whole sharded run on this machine; resolves with the coordinator's exit code. Without
 * `nats`, the launcher's nats-server listens on loopback only and admits two throw-away users
 * with random passwords: the coordinator and the workers, each with the run's permissions
 * (`runPermissions`). Every run gets a fresh run key (unless the security names one), so every
 * message is authenticated. Passwords and the key reach the children through their environment,
 * never their command line; to resume, they are kept in RUN_DIR/nats/launch.json (mode 0600).
 *
 * Faults: a worker process that dies while the coordinator runs is started again with the same
 * arguments (up to `maxRestarts` times per slot): it joins as a replacement, takes the slot its
 * predecessor freed and replays the ledger. A coordinator killed by a signal is started again
 * in resume mode (`dpzo coordinate --resume`, up to `maxRestarts` times): the workers re-join it.
 * The launcher's own nats-server, if it dies, is started again (up to `maxRestarts` times) on the
 * same port, JetStream store, users and permissions: every process reconnects by itself. A
 * coordinator that exits with an error, or anything out of restarts, stops the whole run.
 */
export async function launchLocal(opts: LaunchOptions): Promise<number> {
  const log = opts.log ?? ((l: string) => console.error(l));
  const out = opts.out ?? ((l: string) => console.log(l));
  const { config } = opts;
  const runDir = config.run_dir;
  const maxRestarts = opts.maxRestarts ?? 3;
  const previous = opts.resume ? await readLaunchState(runDir) : null;
  if (opts.resume) {
    if (!previous && !opts.nats) {
      throw new Error(
        `${runDir}/${NATS_STORE_DIR}/${LAUNCH_STATE_FILE} not found: the run was not started by ` +
          "dpzo launch on its own nats-server; resume it with --nats URL (and its credentials)",
      );
    }
    if (previous && opts.run !== undefined && opts.run !== previous.run) {
      throw new Error(`--run: the run in ${runDir} is ${previous.run}, not ${opts.run}`);
    }
  }
  const run = opts.run ?? previous?.run ?? defaultRunId(config);
  const { stages, replicas } = config.cluster;
  if (!opts.resume) {
    try {
      const entries = [...Deno.readDirSync(runDir)].filter((e) => e.name !== NATS_STORE_DIR);
      if (entries.length) {
        throw new Error(
          `run_dir: ${runDir} already holds a run; choose another run_dir (--set run_dir=...), ` +
            `remove it, or continue it with dpzo launch --resume ${runDir}`,
        );
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }

  let server: NatsServer | undefined;
  /** Starts the launcher's nats-server (again): the same port, store, users and permissions. */
  let startServer: (() => Promise<NatsServer>) | undefined;
  let url = opts.nats;
  // A resumed run keeps its run key: the ledger stream's entries are tagged with it.
  const runKey = opts.security?.runKey ?? previous?.runKey ?? toHex(newRunKey());
  let coordSecurity: NatsSecurity = { ...opts.security, runKey };
  let workerSecurity: NatsSecurity = { ...(opts.workerSecurity ?? opts.security), runKey };
  if (!url) {
    const storeDir = `${runDir}/${NATS_STORE_DIR}`;
    await Deno.mkdir(storeDir, { recursive: true });
    const serverLog = await Deno.open(`${storeDir}/server.log`, { create: true, append: true });
    const enc = new TextEncoder();
    const users = localUsers(run, { stages, groups: replicas });
    if (previous?.users) {
      // The same users and passwords as before (the permissions follow from run and shape).
      users.coordinator.password = previous.users.coordinator.password;
      users.worker.password = previous.users.worker.password;
    }
    const port = previous?.port !== undefined && portIsFree(previous.port)
      ? previous.port
      : freePort();
    await writeLaunchState(runDir, {
      format: "dpzo-launch/1",
      run,
      runKey,
      port,
      users: {
        coordinator: { user: users.coordinator.user, password: users.coordinator.password },
        worker: { user: users.worker.user, password: users.worker.password },
      },
    });
    startServer = () =>
      startNatsServer({
        storeDir,
        port,
        log: (l) => serverLog.writeSync(enc.encode(l + "\n")),
        users: [users.coordinator, users.worker],
      });
    server = await startServer();
    url = server.url;
    coordSecurity = { user: users.coordinator.user, password: users.coordinator.password, runKey };
    workerSecurity = { user: users.worker.user, password: users.worker.password, runKey };
    // For more workers on this machine: `set -a; . <store>/worker.env; dpzo worker ...`.
    await Deno.writeTextFile(
      `${storeDir}/worker.env`,
      Object.entries(securityEnv(workerSecurity)).map(([k, v]) => `${k}=${v}\n`).join(""),
      { mode: 0o600 },
    );
    log(
      `launch: nats-server on ${url}, loopback only, users coordinator/worker with throw-away ` +
        `passwords (JetStream store ${storeDir}${
          opts.resume ? ", reused" : ""
        }, log ${storeDir}/server.log)`,
    );
  } else if (!opts.resume && opts.security?.runKey === undefined) {
    // A generated run key is needed again to resume: kept like the local server's secrets.
    await writeLaunchState(runDir, { format: "dpzo-launch/1", run, runKey });
  }
  log(
    `launch: ${opts.resume ? "resuming " : ""}run ${run}: coordinator + ${
      stages * replicas
    } workers (${stages} stages x ${replicas} groups); ` +
      `more workers join with: dpzo worker --nats ${url} --run ${run}` +
      (server
        ? ` (credentials and run key: set -a; . ${runDir}/${NATS_STORE_DIR}/worker.env)`
        : " (with the same credentials and DPZO_RUN_KEY)"),
  );
  if (server) log(`launch: nats-server is pid ${server.process.pid}`);

  const children: Child[] = [];
  // The workers on this machine share its cores: each gets its share of helper threads
  // (src/cores) unless DPZO_THREADS says otherwise. Results do not depend on it.
  const threads = String(localWorkerThreads(stages * replicas));
  const spawn = (
    name: string,
    args: string[],
    stdoutRaw: boolean,
    security: NatsSecurity,
  ) => {
    const proc = new Deno.Command(Deno.execPath(), {
      args: ["run", ...DPZO_RUNTIME_FLAGS, MAIN, ...args],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: {
        NO_COLOR: "1",
        DPZO_THREADS: threads,
        // What the coordinator's "interrupted at step N" line tells to run.
        DPZO_CONTINUE_WITH: `dpzo launch --resume ${runDir}`,
        ...securityEnv(security, true),
      },
    }).spawn();
    const c: Child = {
      name,
      proc,
      status: proc.status,
      done: false,
      handled: false,
      pumps: Promise.resolve(),
    };
    c.status.then(() => (c.done = true));
    const pad = name.padEnd(9);
    c.pumps = Promise.all([
      pumpLines(proc.stdout, stdoutRaw ? out : (l) => log(`${pad}| ${l}`)),
      pumpLines(proc.stderr, (l) => log(`${pad}| ${l}`)),
    ]);
    children.push(c);
    log(`launch: ${name} is pid ${proc.pid}`);
    return c;
  };
  const killAll = async (signal: Deno.Signal = "SIGTERM") => {
    for (const c of children) {
      if (!c.done) {
        try {
          c.proc.kill(signal);
        } catch { /* gone */ }
      }
    }
    const t = setTimeout(() => {
      for (const c of children) {
        if (!c.done) {
          try {
            c.proc.kill("SIGKILL");
          } catch { /* gone */ }
        }
      }
    }, 5000);
    await Promise.all(children.map((c) => c.status));
    clearTimeout(t);
  };

  // Ctrl-C: the coordinator stops at a safe point (cluster/interruption.ts), then the workers;
  // a second one stops everything at once.
  let interrupted = false;
  let onSignal: (() => void) | undefined, onSecond: (() => void) | undefined;
  const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  const interruption = new Promise<"signal">((resolve) => {
    onSignal = () => {
      if (interrupted) return onSecond?.();
      interrupted = true;
      resolve("signal");
    };
  });
  const secondSignal = new Promise<"again">((resolve) => (onSecond = () => resolve("again")));
  for (const s of signals) Deno.addSignalListener(s, onSignal!);

  const common = ["--nats", url, "--run", run, ...(opts.quiet ? ["--quiet"] : [])];
  const startCoordinator = (resume: boolean) =>
    spawn(
      "coord",
      resume ? ["coordinate", "--resume", runDir, ...common] : [
        "coordinate",
        "--config",
        opts.configPath,
        ...opts.sets.flatMap((s) => ["--set", s]),
        "--set",
        `cluster.stages=${stages}`,
        "--set",
        `cluster.replicas=${replicas}`,
        ...common,
      ],
      true,
      coordSecurity,
    );
  const startWorker = (i: number) =>
    spawn(`worker ${i}`, ["worker", "--nats", url!, "--run", run], false, workerSecurity);
  /** Ctrl-C reaches the children too: give the launcher's own handler a moment to see it. */
  const settle = () => new Promise((r) => setTimeout(r, 300));

  let code = 1;
  try {
    let coord = startCoordinator(opts.resume === true);
    let coordRestarts = 0, serverRestarts = 0;
    const workers = Array.from({ length: stages * replicas }, (_, i) => startWorker(i));
    const restarts = workers.map(() => 0);
    for (;;) {
      // The first of: the coordinator ends, a worker process ends, nats-server ends, or Ctrl-C.
      const first = await Promise.race([
        interruption,
        coord.status.then((s) => ({ coord: s })),
        ...workers.flatMap((w, i) => w.handled ? [] : [w.status.then((s) => ({ worker: i, s }))]),
        ...(server ? [server.status.then((s) => ({ server: s }))] : []),
      ]);
      if (first !== "signal" && "server" in first) {
        if (interrupted) continue;
        // The launcher's own nats-server died: started again on the same port, JetStream store
        // (the ledger and run metadata streams) and users; every process reconnects by itself.
        const dead = server!;
        if (serverRestarts >= maxRestarts) {
          log(
            `launch: nats-server (pid ${dead.process.pid}) ${describeExit(first.server)}; no ` +
              `restarts left (--max-restarts ${maxRestarts}); stopping the run`,
          );
          await killAll();
          code = 1;
          break;
        }
        serverRestarts++;
        log(
          `launch: nats-server (pid ${dead.process.pid}) ${describeExit(first.server)}; ` +
            `restarting it on ${url} with the same JetStream store and users (restart ` +
            `${serverRestarts} of ${maxRestarts}); the coordinator and workers reconnect`,
        );
        await dead.stop();
        server = await restartServer(startServer!, log);
        log(`launch: nats-server is pid ${server.process.pid}`);
        continue;
      }
      if (first !== "signal" && !("coord" in first && first.coord.success)) await settle();
      if (first === "signal" || interrupted) {
        log(
          "launch: interrupted; the coordinator stops at a safe point, then the workers " +
            "(Ctrl-C again to stop every process at once)",
        );
        // SIGTERM: in a terminal the coordinator also gets the Ctrl-C itself; the two signals
        // are one request to it, a second SIGINT would make it exit at once.
        try {
          if (!coord.done) coord.proc.kill("SIGTERM");
        } catch { /* gone */ }
        const how = await Promise.race([coord.status, secondSignal]);
        if (how === "again") {
          log("launch: stopping every process now");
          await killAll("SIGKILL");
        } else {
          await killAll();
        }
        code = how !== "again" && how.code === 130 ? 130 : INTERRUPTED_AT_ONCE;
        break;
      }
      if ("worker" in first) {
        const i = first.worker, w = workers[i];
        w.handled = true;
        if (first.s.success) continue; // it left on the coordinator's shutdown message
        if (coord.done) continue; // the coordinator's exit decides (next round)
        if (restarts[i] >= maxRestarts) {
          log(
            `launch: ${w.name} (pid ${w.proc.pid}) ${describeExit(first.s)}; no restarts left ` +
              `(--max-restarts ${maxRestarts}); stopping the run`,
          );
          await killAll();
          code = 1;
          break;
        }
        restarts[i]++;
        log(
          `launch: ${w.name} (pid ${w.proc.pid}) ${
            describeExit(first.s)
          }; starting a replacement ` +
            `(restart ${
              restarts[i]
            } of ${maxRestarts}): it takes the free slot and replays the ledger`,
        );
        workers[i] = startWorker(i);
        continue;
      }
      const s = first.coord;
      if (s.success) {
        code = 0;
        // Workers leave on the coordinator's shutdown message; stragglers are stopped.
        const grace = setTimeout(() => killAll(), 15_000);
        await Promise.race([Promise.all(workers.map((w) => w.status)), interruption]);
        clearTimeout(grace);
        if (interrupted) await killAll();
        break;
      }
      // Killed (not failed with an error): a coordinator in resume mode takes over.
      const resumable = s.signal !== null && coordRestarts < maxRestarts &&
        await Deno.stat(`${runDir}/run.json`).then(() => true, () => false);
      if (!resumable) {
        code = s.code;
        log(
          `launch: the coordinator ${describeExit(s)}` +
            (s.signal !== null && coordRestarts >= maxRestarts
              ? ` and has no restarts left (--max-restarts ${maxRestarts})`
              : "") +
            "; stopping the workers",
        );
        await killAll();
        break;
      }
      coordRestarts++;
      log(
        `launch: the coordinator (pid ${coord.proc.pid}) ${describeExit(s)}; restarting it ` +
          `from the ledger (dpzo coordinate --resume ${runDir}; restart ${coordRestarts} of ` +
          `${maxRestarts}); the workers re-join it`,
      );
      coord = startCoordinator(true);
      // Workers that left meanwhile (e.g. on a shutdown before the kill) are started again.
      workers.forEach((w, i) => {
        if (w.done) workers[i] = startWorker(i);
      });
    }
  } finally {
    for (const s of signals) Deno.removeSignalListener(s, onSignal!);
    await killAll();
    await Promise.all(children.map((c) => c.pumps));
    await server?.stop();
  }
  return code;
}

// ---------------------------------------------------------------------------------------------
// Slurm
// ---------------------------------------------------------------------------------------------

/** The first host of a Slurm host list: "gpu[03-05,07],cpu1" -> "gpu03". */
export function firstHost(nodelist: string): string {
  const m = /^([^,[]+)(?:\[([^\]]+)\])?/.exec(nodelist.trim());
  if (!m) throw new Error(`cannot read the Slurm node list "${nodelist}"`);
  if (!m[2]) return m[1];
  const first = m[2].split(",")[0].split("-")[0];
  return m[1] + first;
}

export type SlurmRole =
  | { role: "coordinator"; procid: number; ntasks: number }
  | { role: "worker"; procid: number; ntasks: number }
  | { role: "idle"; procid: number; ntasks: number };

/**
 * Maps a Slurm task to a role: task 0 is the coordinator (and runs nats-server unless a URL is
 * given), tasks 1..K*R are the workers, any further task has nothing to do.
 */
export function slurmRole(env: Record<string, string | undefined>, workers: number): SlurmRole {
  const procid = Number(env.SLURM_PROCID), ntasks = Number(env.SLURM_NTASKS);
  if (!Number.isInteger(procid) || !Number.isInteger(ntasks) || ntasks < 1) {
    throw new Error("--slurm: SLURM_PROCID and SLURM_NTASKS are not set; run under srun");
  }
  if (ntasks < workers + 1) {
    throw new Error(
      `--slurm: ${workers} workers and a coordinator need ${workers + 1} tasks; ` +
        `the job has ${ntasks} (srun --ntasks=${workers + 1})`,
    );
  }
  if (procid === 0) return { role: "coordinator", procid, ntasks };
  if (procid <= workers) return { role: "worker", procid, ntasks };
  return { role: "idle", procid, ntasks };
}

/** The NATS URL every task uses: given, or nats-server on the job's first node. */
export function slurmNatsUrl(env: Record<string, string | undefined>, port: number): string {
  const list = env.SLURM_JOB_NODELIST ?? env.SLURM_NODELIST;
  if (!list) throw new Error("--slurm: SLURM_JOB_NODELIST is not set; pass --nats URL");
  return `nats://${firstHost(list)}:${port}`;
}
