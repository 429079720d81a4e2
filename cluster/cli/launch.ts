/**
 * `dpzo launch --config FILE --stages K --replicas R [--nats URL] [--set ...]`: a sharded run
 * over NATS in one command (nats-server, coordinator and K x R workers on this machine), or
 * with `--slurm`, one role per Slurm task. `dpzo coordinate` is the coordinator alone (what
 * launch starts; for workers started by hand with `dpzo worker`).
 *
 * `dpzo launch --resume RUN_DIR` continues a launch that stopped (the machine crashed, Ctrl-C):
 * its nats-server on the store and credentials kept in RUN_DIR/nats, the coordinator in resume
 * mode (`dpzo coordinate --resume RUN_DIR`) and fresh workers that replay the ledger.
 */
import { Command, type OptionValues } from "@commander-js/extra-typings";
import { loadRunConfig, type RunConfig } from "../../src/dpzo/config.ts";
import { UsageError } from "../../src/validation.ts";
import { NATS_STORE_DIR, readRunConfig } from "../run.ts";
import {
  coordinateOverNats,
  defaultRunId,
  INTERRUPTED_AT_ONCE,
  launchLocal,
  resumeOverNats,
  slurmNatsUrl,
  slurmRole,
} from "../launcher.ts";
import { runWorker } from "../worker_process.ts";
import { startNatsServer } from "../nats_server.ts";
import { RunId } from "../protocol.ts";
import {
  installRunKey,
  mergeSecurity,
  type NatsSecurity,
  securityFromEnv,
  securityProblem,
} from "../nats_security.ts";
import { flag, positiveInt, printSummary, setsFromEnv } from "./common.ts";
import { checkFitsThisMachine } from "../plan.ts";
import { watchSignals } from "../interruption.ts";
import { z } from "zod";

const nonNegativeInt = z.coerce.number({ error: "expected a number" }).int({
  error: "expected a whole number",
}).nonnegative({ error: "expected 0 or more" });

/** The NATS security flags every cluster command takes (README "Security"). */
function withSecurity<A extends unknown[], O extends OptionValues, G extends OptionValues>(
  cmd: Command<A, O, G>,
) {
  return cmd
    .option("--nats-creds <file>", "NATS credentials file (.creds: user JWT + nkey seed)")
    .option("--nats-nkey <file>", "file with a NATS user nkey seed (SU...)")
    .option(
      "--nats-user <name>",
      "NATS user; the password comes from DPZO_NATS_PASSWORD or --nats-password-file",
    )
    .option("--nats-password-file <file>", "file holding the NATS user's password")
    .option("--nats-tls-ca <file>", "CA (PEM) of the server's certificate; connects over TLS")
    .option("--nats-tls-cert <file>", "client certificate (PEM), for servers that verify clients")
    .option("--nats-tls-key <file>", "the client certificate's key (PEM)")
    .option(
      "--nats-allow-plaintext",
      "connect without TLS to a server off this machine (training data in clear)",
    )
    .option(
      "--run-key-file <file>",
      "the run's secret key (hex) that authenticates every message (or DPZO_RUN_KEY)",
    );
}

interface SecurityFlags {
  natsCreds?: string;
  natsNkey?: string;
  natsUser?: string;
  natsPasswordFile?: string;
  natsTlsCa?: string;
  natsTlsCert?: string;
  natsTlsKey?: string;
  natsAllowPlaintext?: boolean;
  runKeyFile?: string;
}

const readTrimmed = (path: string, what: string) => {
  try {
    return Deno.readTextFileSync(path).trim();
  } catch (e) {
    throw new UsageError(`${what}: cannot read ${path}: ${(e as Error).message}`);
  }
};

/** Flags over DPZO_NATS_* / DPZO_RUN_KEY; a usage error for an unsafe or incomplete setup. */
export function securityOf(o: SecurityFlags, url?: string): NatsSecurity {
  const s = mergeSecurity(securityFromEnv(Deno.env.toObject()), {
    creds: o.natsCreds,
    nkey: o.natsNkey,
    user: o.natsUser,
    password: o.natsPasswordFile
      ? readTrimmed(o.natsPasswordFile, "--nats-password-file")
      : undefined,
    tlsCa: o.natsTlsCa,
    tlsCert: o.natsTlsCert,
    tlsKey: o.natsTlsKey,
    allowPlaintext: o.natsAllowPlaintext ? true : undefined,
    runKey: o.runKeyFile ? readTrimmed(o.runKeyFile, "--run-key-file") : undefined,
  });
  const problem = url ? securityProblem(url, s) : null;
  if (problem) throw new UsageError(problem);
  return s;
}

const collect = (v: string, prev: string[]) => [...prev, v];

/** The command the "interrupted" line names: the launcher's (it sets it), or `fallback`. */
function continueWith(fallback: string): string {
  return Deno.env.get("DPZO_CONTINUE_WITH") || fallback;
}

function runIdOf(config: RunConfig, run: string | undefined): string {
  return run === undefined ? defaultRunId(config) : flag("--run", RunId, run);
}

async function configWith(
  path: string,
  sets: string[],
  stages?: string,
  replicas?: string,
): Promise<{ config: RunConfig; sets: string[] }> {
  const all = [...sets];
  if (stages !== undefined) all.push(`cluster.stages=${flag("--stages", positiveInt, stages)}`);
  if (replicas !== undefined) {
    all.push(`cluster.replicas=${flag("--replicas", positiveInt, replicas)}`);
  }
  return { config: await loadRunConfig(path, all, setsFromEnv()), sets: all };
}

export function launchCommand() {
  return withSecurity(new Command("launch"))
    .description("a sharded run over NATS: nats-server, coordinator and K x R stage workers")
    .option("--config <file>", "run configuration, e.g. configs/tiny-sst2.yaml")
    .option(
      "--resume <run_dir>",
      "continue a stopped launch: its nats-server store and credentials, the coordinator from the ledger",
    )
    .option("--stages <K>", "pipeline stages per replica group (default: cluster.stages, 1)")
    .option("--replicas <R>", "replica groups splitting each batch (default: cluster.replicas, 1)")
    .option("--nats <url>", "a running nats-server (default: start one on a free loopback port)")
    .option("--run <id>", "run id on the NATS server (default: the run directory's name)")
    .option("--set <key=value>", "override a config field (repeatable)", collect, [] as string[])
    .option(
      "--max-restarts <n>",
      "how often a process that died is started again: per worker slot, the coordinator, " +
        "the launcher's nats-server",
      "3",
    )
    .option("--slurm", "one role per Slurm task: task 0 coordinator, tasks 1..K*R workers")
    .option(
      "--nats-port <port>",
      "with --slurm and no --nats: the port of nats-server on task 0",
      "4222",
    )
    .option(
      "--nats-worker-creds <file>",
      "with --nats: the workers' credentials file, when they differ from the coordinator's",
    )
    .option("--quiet", "plain progress lines instead of a live bar")
    .action(async (opts) => {
      if (!opts.resume && !opts.config) {
        throw new UsageError("launch: give --config FILE (a new run) or --resume RUN_DIR");
      }
      if (
        opts.resume &&
        (opts.config || opts.set.length || opts.stages !== undefined ||
          opts.replicas !== undefined)
      ) {
        throw new UsageError(
          "launch --resume: the run's own run.json is its config; drop --config/--set/--stages/--replicas",
        );
      }
      if (opts.resume && opts.slurm) {
        throw new UsageError(
          "launch --resume: not with --slurm; run dpzo coordinate --resume RUN_DIR --nats URL on " +
            "task 0 and dpzo worker on the others",
        );
      }
      const maxRestarts = flag("--max-restarts", nonNegativeInt, opts.maxRestarts);
      const { config, sets } = opts.resume
        ? { config: await readRunConfig(opts.resume), sets: [] }
        : await configWith(opts.config!, opts.set, opts.stages, opts.replicas);
      const run = opts.resume && opts.run === undefined ? undefined : runIdOf(config, opts.run);
      if (!opts.slurm) {
        // Before anything starts: the workers must fit this machine (cluster/plan.ts).
        await checkFitsThisMachine(config, { command: "launch", configPath: opts.config });
        const security = securityOf(opts, opts.nats);
        const code = await launchLocal({
          configPath: opts.config ?? "",
          sets,
          config,
          run,
          nats: opts.nats,
          resume: opts.resume !== undefined,
          maxRestarts,
          security,
          workerSecurity: opts.natsWorkerCreds
            ? { ...security, creds: opts.natsWorkerCreds, nkey: undefined, user: undefined }
            : undefined,
          quiet: opts.quiet,
        });
        // 130: the coordinator printed where the run stopped and how to continue.
        if (code === 130) Deno.exit(130);
        if (code === INTERRUPTED_AT_ONCE) {
          console.log(
            `interrupted; every process of the run was stopped; continue with: ` +
              `dpzo launch --resume ${config.run_dir}`,
          );
          Deno.exit(130);
        }
        if (code !== 0) {
          throw new Error(
            `the run failed (exit code ${code}); see the log above; ` +
              `continue it with dpzo launch --resume ${config.run_dir}`,
          );
        }
        return;
      }
      if (run === undefined) throw new Error("unreachable: --slurm without a run id");
      const { stages, replicas } = config.cluster;
      const role = slurmRole(Deno.env.toObject(), stages * replicas);
      const port = flag("--nats-port", positiveInt, opts.natsPort);
      const url = opts.nats ?? slurmNatsUrl(Deno.env.toObject(), port);
      const security = securityOf(opts, url);
      installRunKey(run, security);
      const tag = `task ${role.procid}/${role.ntasks}`;
      if (role.role === "idle") {
        console.error(`${tag}: nothing to do (the run needs ${stages * replicas + 1} tasks)`);
        return;
      }
      if (role.role === "worker") {
        await runWorker({ url, run, security, log: (l) => console.error(`${tag} | ${l}`) });
        return;
      }
      const server = opts.nats ? undefined : await startNatsServer({
        storeDir: `${config.run_dir}/${NATS_STORE_DIR}`,
        host: "0.0.0.0",
        port,
      });
      const signals = watchSignals();
      try {
        const s = await coordinateOverNats(config, {
          url: server ? `nats://127.0.0.1:${port}` : url,
          run,
          security,
          quiet: opts.quiet,
          log: (l) => console.error(`${tag} | ${l}`),
          interrupt: signals.signal,
          continueWith: `dpzo coordinate --resume ${config.run_dir} --nats ${url} on task 0 ` +
            `and dpzo worker on the others`,
        });
        printSummary(config.run_dir, s);
      } finally {
        signals.dispose();
        await server?.stop();
      }
    });
}

export function coordinateCommand() {
  return withSecurity(new Command("coordinate"))
    .description("the coordinator of a sharded run alone (workers join with dpzo worker)")
    .option("--config <file>", "run configuration")
    .option(
      "--resume <run_dir>",
      "continue a stopped run from its ledger; running workers re-join, new ones replay it",
    )
    .requiredOption("--nats <url>", "the nats-server, e.g. nats://10.0.0.1:4222")
    .option("--run <id>", "run id (default: the run directory's name)")
    .option("--set <key=value>", "override a config field (repeatable)", collect, [] as string[])
    .option("--quiet", "plain progress lines instead of a live bar")
    .action(async (opts) => {
      if (!opts.resume === !opts.config) {
        throw new UsageError("coordinate: give --config FILE (a new run) or --resume RUN_DIR");
      }
      if (opts.resume && opts.set.length) {
        throw new UsageError(
          "coordinate --resume: the run's own run.json is its config; drop --set",
        );
      }
      const security = securityOf(opts, opts.nats);
      const config = opts.resume
        ? await readRunConfig(opts.resume)
        : await loadRunConfig(opts.config!, opts.set, setsFromEnv());
      const run = runIdOf(config, opts.run);
      // Ctrl-C / SIGTERM: the run stops at a safe point and says how to continue.
      const signals = watchSignals();
      const common = {
        url: opts.nats,
        run,
        quiet: opts.quiet,
        security,
        interrupt: signals.signal,
        continueWith: continueWith(
          `dpzo coordinate --resume ${config.run_dir} --nats ${opts.nats}, and start the ` +
            `workers again (dpzo worker --nats ${opts.nats} --run ${run})`,
        ),
      };
      try {
        const s = opts.resume
          ? await resumeOverNats(opts.resume, common)
          : await coordinateOverNats(config, common);
        printSummary(config.run_dir, s);
      } finally {
        signals.dispose();
      }
    });
}

export function workerCommand() {
  return withSecurity(new Command("worker"))
    .description("a stage worker: joins a run over NATS and gets its stage from the coordinator")
    .requiredOption("--nats <url>", "the run's nats-server, e.g. nats://10.0.0.1:4222")
    .requiredOption("--run <id>", "the run id the launcher printed")
    .option("--id <name>", "worker id (default: host-pid-random)")
    .action(async (opts) => {
      const run = flag("--run", RunId, opts.run);
      if (!/^nats:\/\/|^tls:\/\/|^[\w.-]+:\d+$/.test(opts.nats)) {
        throw new UsageError(`--nats: expected a URL like nats://host:4222, got ${opts.nats}`);
      }
      const security = securityOf(opts, opts.nats);
      installRunKey(run, security);
      await runWorker({ url: opts.nats, run, workerId: opts.id, security });
    });
}
