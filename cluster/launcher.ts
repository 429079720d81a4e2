/**
 * `dpzo launch`: one command for a sharded run. Starts `nats-server` when no URL is given (a
 * free loopback port, JetStream on, its store in the run directory), then the coordinator and
 * K x R stage workers as processes of this machine, prefixes their log lines, and stops them
 * all on Ctrl-C or when one of them fails. Under Slurm (`--slurm`) each task takes one role.
 *
 * The coordinator process is `prepareRun` + `coordinateRun` over the NATS transport: the same
 * coordinator as `dpzo train`, only the transport differs.
 */
import type { RunConfig } from "../src/dpzo/config.ts";
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
import { openNatsCoordinator } from "./transport/nats.ts";
import { startNatsServer } from "./nats_server.ts";
import {
  installRunKey,
  localUsers,
  type NatsSecurity,
  securityEnv,
  toHex,
} from "./nats_security.ts";
import { newRunKey } from "./protocol.ts";

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
    const opened = await StreamLedger.open(
      transport.connection,
      opts.run,
      `${config.run_dir}/ledger.jsonl`,
      { resume: ctx.resume === true, log },
    );
    ledger = opened.ledger;
    await transport.ready(opened.entries.length);
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
const PERMISSIONS = [
  "--allow-read",
  "--allow-write",
  "--allow-env",
  "--allow-net",
  "--allow-run",
  "--allow-sys",
  "--allow-ffi",
];

/** Streams a child's output line by line through `emit`. */
async function pumpLines(stream: ReadableStream<Uint8Array>, emit: (line: string) => void) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        emit(buf.slice(0, nl).replace(/\r/g, ""));
        buf = buf.slice(nl + 1);
      }
    }
  } catch { /* the child went away */ }
  if (buf) emit(buf);
}

interface Child {
  name: string;
  proc: Deno.ChildProcess;
  status: Promise<Deno.CommandStatus>;
  done: boolean;
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

/**
 * Runs a whole sharded run on this machine; resolves with the coordinator's exit code. Without
 * `nats`, the launcher's nats-server listens on loopback only and admits two throw-away users
 * with random passwords: the coordinator and the workers, each with the run's permissions
 * (`runPermissions`). Every run gets a fresh run key (unless the security names one), so every
 * message is authenticated. Passwords and the key reach the children through their environment,
 * never their command line.
 */
export async function launchLocal(opts: LaunchOptions): Promise<number> {
  const log = opts.log ?? ((l: string) => console.error(l));
  const out = opts.out ?? ((l: string) => console.log(l));
  const { config } = opts;
  const run = opts.run ?? defaultRunId(config);
  const { stages, replicas } = config.cluster;
  try {
    const entries = [...Deno.readDirSync(config.run_dir)].filter((e) => e.name !== NATS_STORE_DIR);
    if (entries.length) {
      throw new Error(
        `run_dir: ${config.run_dir} already holds a run; choose another run_dir (--set run_dir=...) or remove it`,
      );
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }

  let server: Awaited<ReturnType<typeof startNatsServer>> | undefined;
  let url = opts.nats;
  const runKey = opts.security?.runKey ?? toHex(newRunKey());
  let coordSecurity: NatsSecurity = { ...opts.security, runKey };
  let workerSecurity: NatsSecurity = { ...(opts.workerSecurity ?? opts.security), runKey };
  if (!url) {
    const storeDir = `${config.run_dir}/${NATS_STORE_DIR}`;
    await Deno.mkdir(storeDir, { recursive: true });
    const serverLog = await Deno.open(`${storeDir}/server.log`, { create: true, append: true });
    const enc = new TextEncoder();
    const users = localUsers(run, { stages, groups: replicas });
    server = await startNatsServer({
      storeDir,
      log: (l) => serverLog.writeSync(enc.encode(l + "\n")),
      users: [users.coordinator, users.worker],
    });
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
        `passwords (JetStream store ${storeDir}, log ${storeDir}/server.log)`,
    );
  }
  log(
    `launch: run ${run}: coordinator + ${
      stages * replicas
    } workers (${stages} stages x ${replicas} groups); ` +
      `more workers join with: dpzo worker --nats ${url} --run ${run}` +
      (server
        ? ` (credentials and run key: set -a; . ${config.run_dir}/${NATS_STORE_DIR}/worker.env)`
        : " (with the same credentials and DPZO_RUN_KEY)"),
  );

  const children: Child[] = [];
  const spawn = (
    name: string,
    args: string[],
    stdoutRaw: boolean,
    security: NatsSecurity,
  ) => {
    const proc = new Deno.Command(Deno.execPath(), {
      args: ["run", ...PERMISSIONS, MAIN, ...args],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1", ...securityEnv(security, true) },
    }).spawn();
    const c: Child = { name, proc, status: proc.status, done: false, pumps: Promise.resolve() };
    c.status.then(() => (c.done = true));
    const pad = name.padEnd(9);
    c.pumps = Promise.all([
      pumpLines(proc.stdout, stdoutRaw ? out : (l) => log(`${pad}| ${l}`)),
      pumpLines(proc.stderr, (l) => log(`${pad}| ${l}`)),
    ]);
    children.push(c);
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

  let interrupted = false;
  let onSignal: (() => void) | undefined;
  const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  const interruption = new Promise<"signal">((resolve) => {
    onSignal = () => {
      interrupted = true;
      resolve("signal");
    };
  });
  for (const s of signals) Deno.addSignalListener(s, onSignal!);

  let code = 1;
  try {
    const coord = spawn(
      "coord",
      [
        "coordinate",
        "--config",
        opts.configPath,
        ...opts.sets.flatMap((s) => ["--set", s]),
        "--set",
        `cluster.stages=${stages}`,
        "--set",
        `cluster.replicas=${replicas}`,
        "--nats",
        url,
        "--run",
        run,
        ...(opts.quiet ? ["--quiet"] : []),
      ],
      true,
      coordSecurity,
    );
    const workers = Array.from(
      { length: stages * replicas },
      (_, i) =>
        spawn(`worker ${i}`, ["worker", "--nats", url!, "--run", run], false, workerSecurity),
    );
    // The first of: the coordinator ends, a worker fails, or Ctrl-C.
    const workerFailure = Promise.race(
      workers.map((w) =>
        w.status.then((s) => (s.success ? new Promise<never>(() => {}) : { w, s }))
      ),
    );
    const first = await Promise.race([
      coord.status.then((s) => ({ coord: s })),
      workerFailure.then((f) => ({ worker: f })),
      interruption,
    ]);
    if (first === "signal") {
      log("launch: interrupted; stopping every process");
      await killAll("SIGINT");
      code = 130;
    } else if ("worker" in first) {
      log(
        `launch: ${first.worker.w.name} exited with code ${first.worker.s.code}; stopping the run`,
      );
      await killAll();
      code = 1;
    } else {
      code = first.coord.code;
      if (code !== 0) {
        log(`launch: the coordinator exited with code ${code}; stopping the workers`);
        await killAll();
      } else {
        // Workers leave on the coordinator's shutdown message; stragglers are stopped.
        const grace = setTimeout(() => killAll(), 15_000);
        await Promise.race([Promise.all(workers.map((w) => w.status)), interruption]);
        clearTimeout(grace);
        if (interrupted) await killAll("SIGINT");
      }
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
