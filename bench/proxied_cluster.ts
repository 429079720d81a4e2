/**
 * A sharded run as on several machines, each worker behind its own link (bench/link_proxy.ts):
 * a nats-server on loopback, `dpzo coordinate` connected to it directly (the coordinator shares
 * the server's host, as task 0 does under Slurm), and K x R `dpzo worker` processes, each
 * connected through a proxy that adds latency, caps bandwidth, drops or stalls its link. A
 * worker process that exits before the run ends is started again (as `dpzo launch` does). Used
 * by bench/slow_links.ts and bench/partition.ts.
 */
import { pumpLines, startNatsServer } from "../cluster/nats_server.ts";
import { localWorkerThreads } from "../cluster/plan.ts";
import { type LinkProxy, type LinkShape, startLinkProxy } from "./link_proxy.ts";

export const ROOT = new URL("..", import.meta.url).pathname;

export interface ProxiedRunOptions {
  /** Run id and directory (`run_dir`), fresh. */
  run: string;
  runDir: string;
  /** `--set` overrides of configs/tiny-sst2.yaml (cluster.stages / replicas among them). */
  sets: string[];
  workers: number;
  /** Each worker's link; null: unshaped (the proxy still forwards). */
  shape: LinkShape | null;
  /** Called with each worker's link once the processes are started. */
  started?: (links: LinkProxy[], coordinatorLines: string[]) => void;
  /** Every log line of every process (prefixed); default: dropped (kept in `log`). */
  echo?: (line: string) => void;
  /** The coordinator is killed after this long (a hung run); default 900 s. */
  timeoutS?: number;
}

export interface ProxiedRunResult {
  code: number;
  wallS: number;
  /** Bytes each worker's link carried: up (worker to server), down. */
  links: { up: number; down: number }[];
  /** Worker processes started again after one exited early. */
  restarts: number;
  log: string[];
}

const DPZO = ["run", "-A", "--v8-flags=--max-semi-space-size=1", `${ROOT}cluster/main.ts`];

export async function proxiedRun(o: ProxiedRunOptions): Promise<ProxiedRunResult> {
  const t0 = performance.now();
  const log: string[] = [];
  const coordinatorLines: string[] = [];
  const say = (line: string) => {
    log.push(`${((performance.now() - t0) / 1000).toFixed(1).padStart(6)} ${line}`);
    o.echo?.(line);
  };
  const server = await startNatsServer({ storeDir: `${o.runDir}-nats` });
  const target = `127.0.0.1:${server.port}`;
  const links = Array.from(
    { length: o.workers },
    () => startLinkProxy({ target, ...(o.shape ?? { delayMs: 0 }) }),
  );
  const threads = String(localWorkerThreads(o.workers));
  const live = new Set<Deno.ChildProcess>();
  const kill = (p: Deno.ChildProcess) => {
    try {
      p.kill("SIGKILL");
    } catch { /* gone */ }
  };
  const spawn = (name: string, args: string[], onLine?: (l: string) => void) => {
    const p = new Deno.Command(Deno.execPath(), {
      args: [...DPZO, ...args],
      cwd: ROOT,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1", DPZO_THREADS: threads },
    }).spawn();
    const emit = (l: string) => {
      say(`${name.padEnd(6)}| ${l}`);
      onLine?.(l);
    };
    const pumps = Promise.all([pumpLines(p.stdout, emit), pumpLines(p.stderr, emit)]);
    live.add(p);
    return {
      p,
      done: p.status.then(async (s) => {
        live.delete(p);
        await pumps;
        return s.code;
      }),
    };
  };
  const sets = [...o.sets, `run_dir=${o.runDir}`].flatMap((s) => ["--set", s]);
  const coordinator = spawn(
    "coord",
    ["coordinate", "--config", "configs/tiny-sst2.yaml", "--nats", server.url, "--run", o.run]
      .concat(["--quiet", ...sets]),
    (l) => coordinatorLines.push(l),
  );
  let finished = false, restarts = 0;
  const worker = (i: number): Promise<number> => {
    const w = spawn(`w${i}`, [
      "worker",
      "--nats",
      `nats://127.0.0.1:${links[i].port}`,
      "--run",
      o.run,
      "--id",
      `w${i}-${restarts}`,
    ]);
    return w.done.then((code) => {
      if (finished || code === 0) return code;
      restarts++;
      say(`bench | worker w${i} exited with ${code}; starting it again`);
      return worker(i);
    });
  };
  const workers = links.map((_, i) => worker(i));
  o.started?.(links, coordinatorLines);
  const hung = setTimeout(() => {
    say(`bench | no end after ${o.timeoutS ?? 900} s: killing the coordinator`);
    kill(coordinator.p);
  }, (o.timeoutS ?? 900) * 1000);
  const code = await coordinator.done;
  clearTimeout(hung);
  finished = true;
  const wallS = (performance.now() - t0) / 1000;
  // The workers stop on the coordinator's shutdown; ones cut off from it are stopped here.
  const late = setTimeout(() => {
    say("bench | workers still running 20 s after the coordinator ended: killed");
    live.forEach(kill);
  }, 20_000);
  await Promise.all(workers);
  clearTimeout(late);
  const bytes = links.map((l) => ({ up: l.bytes.up, down: l.bytes.down }));
  await Promise.all(links.map((l) => l.close()));
  await server.stop();
  return { code, wallS, links: bytes, restarts, log };
}

/** `step_s` of each training step of a run (metrics.jsonl), in order. */
export async function stepTimes(runDir: string): Promise<number[]> {
  return (await Deno.readTextFile(`${runDir}/metrics.jsonl`)).trim().split("\n")
    .map((l) => JSON.parse(l))
    .filter((m) => m.step_s !== undefined && m.event === undefined)
    .map((m) => m.step_s as number);
}

export const median = (a: number[]): number => {
  const s = [...a].sort((x, y) => x - y);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
