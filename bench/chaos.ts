/**
 * Chaos: a sharded run (K = 2 stages x R = 2 replica groups, `dpzo launch`, `insecure_seed`)
 * while a schedule drawn from a seed kills (SIGKILL) workers, the coordinator and nats-server at
 * random moments — one at a time, two at once, and a replacement while it loads its slice and
 * replays the ledger. Then the same run undisturbed, and the comparison:
 *
 *   faults injected / survived, steps aborted and retried, ledger entries lost or duplicated,
 *   time from each kill to the run's next released step, extra wall time per fault, and whether
 *   the final weights hash, the ledger and epsilon equal the undisturbed run's.
 *
 * "kill -> next step" is the time from a kill to the first step released after the coordinator
 * recovered from it (a step already being stored when the kill came does not count).
 *
 * Faults are triggered by ledger progress (a kill at step s happens once the ledger holds s
 * steps), so the schedule means the same on a fast or a loaded machine. Run:
 *
 *   deno run -A bench/chaos.ts [--seed 1] [--steps 300] [--faults 24] [--out DIR] [--keep]
 */
import { parseArgs } from "node:util";

const ROOT = new URL("..", import.meta.url).pathname;
const MAIN = `${ROOT}cluster/main.ts`;
const { values } = parseArgs({
  args: Deno.args,
  options: {
    seed: { type: "string", default: "1" },
    steps: { type: "string", default: "300" },
    faults: { type: "string", default: "24" },
    config: { type: "string", default: "configs/tiny-sst2.yaml" },
    out: { type: "string" },
    keep: { type: "boolean", default: false },
  },
});
const seed = Number(values.seed), steps = Number(values.steps), nFaults = Number(values.faults);
for (const [k, v] of [["--seed", seed], ["--steps", steps], ["--faults", nFaults]] as const) {
  if (!Number.isInteger(v) || v < 0) throw new Error(`${k}: expected a whole number, got ${v}`);
}
if (steps < 40) throw new Error("--steps: at least 40 (faults are spread over the run)");
const K = 2, R = 2, WORKERS = K * R;

/** mulberry32: a small seeded generator for the schedule (not for anything of the run). */
function rng(s: number) {
  let a = s >>> 0;
  return () => {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Target = { kind: "worker"; slot: number } | { kind: "coord" } | { kind: "nats" };
interface Fault {
  /** Kill once the ledger holds this many steps. */
  atStep: number;
  targets: Target[];
  /** Kill the replacement of a worker killed by the previous fault while it loads/replays. */
  duringReplay?: boolean;
}

/** The schedule: `n` faults at increasing ledger steps; a few two at once, a few in replay. */
function schedule(n: number, seed: number): Fault[] {
  const r = rng(seed);
  const pick = <T>(xs: T[]) => xs[Math.floor(r() * xs.length)];
  const worker = (): Target => ({ kind: "worker", slot: Math.floor(r() * WORKERS) });
  const one = (): Target => {
    const x = r();
    return x < 0.6 ? worker() : x < 0.8 ? { kind: "coord" } : { kind: "nats" };
  };
  const faults: Fault[] = [];
  // Spread over steps 5 .. steps - 10, with a random offset inside each stretch.
  const first = 5, last = steps - 10, span = (last - first) / n;
  for (let i = 0; i < n; i++) {
    const atStep = Math.round(first + span * (i + 0.15 + 0.7 * r()));
    const x = r();
    const prev = faults.at(-1);
    if (x < 0.15 && prev?.targets.some((t) => t.kind === "worker") && !prev.duringReplay) {
      faults.push({ atStep: prev.atStep, targets: [], duringReplay: true });
    } else if (x < 0.35) {
      const a = worker();
      const b = pick<Target>([
        { kind: "worker", slot: (a as { slot: number }).slot + 1 + Math.floor(r() * 3) },
        { kind: "coord" },
        { kind: "nats" },
      ]);
      if (b.kind === "worker") b.slot %= WORKERS;
      faults.push({ atStep, targets: [a, b] });
    } else {
      faults.push({ atStep, targets: [one()] });
    }
  }
  return faults;
}

const name = (t: Target) =>
  t.kind === "worker" ? `worker ${t.slot}` : t.kind === "coord" ? "coordinator" : "nats-server";

interface Launch {
  child: Deno.ChildProcess;
  lines: { t: number; line: string }[];
  status: Promise<Deno.CommandStatus>;
  /** The newest pid the launcher logged for "coord", "worker i", "nats-server". */
  pid(who: string): number | undefined;
}

function launch(dir: string, log: string): Launch {
  const args = [
    "run",
    "-A",
    MAIN,
    "launch",
    "--config",
    values.config!,
    "--stages",
    String(K),
    "--replicas",
    String(R),
    "--max-restarts",
    "1000",
    "--quiet",
    "--set",
    `run_dir=${dir}`,
    "--set",
    `insecure_seed=${seed}`,
    "--set",
    `train.steps=${steps}`,
    "--set",
    "train.eval_every=0",
    "--set",
    "task.val_examples=32",
    "--set",
    "task.test_examples=32",
    // Two micro-batches of a 16-example batch: both replica groups work every step.
    "--set",
    "cluster.micro_batch=8",
  ];
  // Its own process group: everything it started goes away with it.
  const child = new Deno.Command("setsid", {
    args: [Deno.execPath(), ...args],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const lines: Launch["lines"] = [];
  const file = Deno.openSync(log, { create: true, write: true, truncate: true });
  const enc = new TextEncoder();
  const pump = async (s: ReadableStream<Uint8Array>) => {
    let buf = "";
    for await (const chunk of s.pipeThrough(new TextDecoderStream())) {
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const t = performance.now();
        lines.push({ t, line });
        file.writeSync(enc.encode(`${(t / 1000).toFixed(2)} ${line}\n`));
      }
    }
  };
  const pumps = Promise.all([pump(child.stdout), pump(child.stderr)]).catch(() => {});
  return {
    child,
    lines,
    status: child.status.then(async (s) => {
      await pumps;
      file.close();
      return s;
    }),
    pid(who) {
      const re = new RegExp(`^launch: ${who} is pid (\\d+)$`);
      for (let i = lines.length - 1; i >= 0; i--) {
        const m = re.exec(lines[i].line);
        if (m) return Number(m[1]);
      }
      return undefined;
    },
  };
}

function ledgerLines(dir: string): number {
  try {
    return Deno.readTextFileSync(`${dir}/ledger.jsonl`).split("\n").filter((l) => l.trim())
      .length;
  } catch {
    return 0;
  }
}

function readJson(path: string) {
  return JSON.parse(Deno.readTextFileSync(path));
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** SIGKILL, if it is still there. */
function kill(pid: number | undefined): boolean {
  if (pid === undefined) return false;
  try {
    Deno.kill(pid, "SIGKILL");
    return true;
  } catch {
    return false;
  }
}

const out = values.out ?? await Deno.makeTempDir({ prefix: "dpzo-chaos-" });
await Deno.mkdir(out, { recursive: true });
const plan = schedule(nFaults, seed);
console.log(
  `chaos: seed ${seed}, K=${K} x R=${R} (${WORKERS} workers), ${steps} steps of ${values.config}, ` +
    `${
      plan.reduce((n, f) => n + Math.max(1, f.targets.length), 0)
    } kills in ${plan.length} faults; ` +
    `logs in ${out}`,
);

// 1. The run under faults.
const chaosDir = `${out}/chaos`;
const t0 = performance.now();
const l = launch(chaosDir, `${out}/chaos.log`);
let ended = false;
l.status.then(() => (ended = true));
interface Done {
  fault: Fault;
  killed: string[];
  at: number;
  ledger: number;
  nextStepS?: number;
}
const done: Done[] = [];
let lastWorkerKill: { slot: number; pid: number } | undefined;
// When the ledger grew: with the log's recovery lines, the time from each kill to the first step
// released after the run recovered from it.
const growth: { t: number; n: number }[] = [];
const poll = setInterval(() => {
  const n = ledgerLines(chaosDir);
  if (n !== growth.at(-1)?.n) growth.push({ t: performance.now(), n });
}, 50);
for (const f of plan) {
  if (f.duringReplay) {
    // The replacement of the worker just killed: once the launcher has started it and it has a
    // slot (it is loading its slice and replaying the ledger), kill it too.
    const prev = lastWorkerKill;
    if (!prev) continue;
    const who = `worker ${prev.slot}`;
    let pid: number | undefined;
    const deadline = performance.now() + 60_000;
    while (!ended && performance.now() < deadline) {
      pid = l.pid(who);
      if (pid !== undefined && pid !== prev.pid) {
        const joined = l.lines.some((x) =>
          x.line.startsWith(`${who.padEnd(9)}| worker `) && x.line.includes(`-${pid}-`) &&
          /: layers /.test(x.line)
        );
        if (joined) break;
      }
      await sleep(20);
    }
    if (ended || pid === undefined || pid === prev.pid) continue;
    const ledger = ledgerLines(chaosDir);
    if (kill(pid)) {
      done.push({ fault: f, killed: [`${who} (replaying)`], at: performance.now(), ledger });
    }
    lastWorkerKill = undefined;
    continue;
  }
  while (!ended && ledgerLines(chaosDir) < f.atStep) await sleep(50);
  if (ended) break;
  // Every process of the previous fault is back (the launcher logged its new pid).
  const at = performance.now(), ledger = ledgerLines(chaosDir);
  const killed: string[] = [];
  for (const t of f.targets) {
    const who = t.kind === "worker"
      ? `worker ${t.slot}`
      : t.kind === "coord"
      ? "coord"
      : "nats-server";
    const pid = l.pid(who);
    if (kill(pid)) {
      killed.push(name(t));
      if (t.kind === "worker") lastWorkerKill = { slot: t.slot, pid: pid! };
    }
  }
  if (killed.length) done.push({ fault: f, killed, at, ledger });
}
const status = await l.status;
clearInterval(poll);
const chaosWall = (performance.now() - t0) / 1000;

// 2. The same run undisturbed.
const refDir = `${out}/reference`;
const t1 = performance.now();
const ref = launch(refDir, `${out}/reference.log`);
const refStatus = await ref.status;
const refWall = (performance.now() - t1) / 1000;
if (!refStatus.success) throw new Error(`the undisturbed run failed: see ${out}/reference.log`);

// 3. The comparison.
const refSummary = readJson(`${refDir}/summary.json`);
const refLedger = Deno.readTextFileSync(`${refDir}/ledger.jsonl`).trim().split("\n");
let summary: { final_weights_sha256: string | null; epsilon: number | null } = {
  final_weights_sha256: null,
  epsilon: null,
};
try {
  summary = readJson(`${chaosDir}/summary.json`);
} catch { /* the run failed: nothing to compare */ }
let ledger: string[] = [];
try {
  ledger = Deno.readTextFileSync(`${chaosDir}/ledger.jsonl`).trim().split("\n");
} catch { /* none */ }
const stepOf = (line: string) => JSON.parse(line).step as number;
const seen = new Map<number, number>();
for (const line of ledger) seen.set(stepOf(line), (seen.get(stepOf(line)) ?? 0) + 1);
const duplicated = [...seen.values()].reduce((n, c) => n + Math.max(0, c - 1), 0);
const lost = refLedger.filter((line, i) => ledger[i] !== line && !ledger.includes(line)).length;
const sameLedger = ledger.length === refLedger.length && ledger.every((x, i) => x === refLedger[i]);
const aborted = l.lines.filter((x) => /step \d+ interrupted .*not released: aborted/.test(x.line))
  .length;
const completed = l.lines.filter((x) => /step \d+ interrupted .*it is in the ledger/.test(x.line))
  .length;
// A step already on its way to the ledger when the kill came does not count: the first step
// after the coordinator's next "recovered" / "all workers ready" line does.
const recoveredAt = l.lines.filter((x) =>
  /coordinator: recovered: every worker|coordinator: all \d+ workers ready/.test(x.line)
).map((x) => x.t);
for (const d of done) {
  const rec = recoveredAt.find((t) => t > d.at);
  const next = rec === undefined ? undefined : growth.find((g) => g.t > rec && g.n > d.ledger);
  if (next) d.nextStepS = (next.t - d.at) / 1000;
}
const kills = done.reduce((n, d) => n + d.killed.length, 0);
const survived = status.success ? done.filter((d) => d.nextStepS !== undefined).length : 0;
const lastEnd = done.at(-1);
if (lastEnd && lastEnd.nextStepS === undefined && status.success) {
  // A fault after the last step (final evaluation): the run finished, nothing left to release.
  lastEnd.nextStepS = NaN;
}

console.log("");
console.log(" #  at step  killed                                   first step after recovery");
done.forEach((d, i) =>
  console.log(
    `${String(i + 1).padStart(2)}  ${String(d.ledger).padStart(7)}  ${
      d.killed.join(" + ").padEnd(40)
    } ${
      d.nextStepS === undefined
        ? "never"
        : Number.isNaN(d.nextStepS)
        ? "(run done)"
        : `${d.nextStepS.toFixed(1)} s`
    }`,
  )
);
const byKind = (test: (d: Done) => boolean) => {
  const xs = done.filter(test).map((d) => d.nextStepS!).filter((x) => Number.isFinite(x)).sort((
    a,
    b,
  ) => a - b);
  if (!xs.length) return "none";
  const median = xs[Math.floor(xs.length / 2)];
  return `${xs.length} faults, median ${median.toFixed(1)} s, max ${xs.at(-1)!.toFixed(1)} s`;
};
const only = (k: string) => (d: Done) => d.killed.length === 1 && d.killed[0].startsWith(k);
const stepS = refWall / steps;
console.log("");
console.log(
  `faults injected            ${done.length} (${kills} kills: ${
    done.filter((d) => d.killed.length === 2).length
  } two at once, ${done.filter((d) => d.fault.duringReplay).length} during a replacement's replay)`,
);
console.log(
  `faults survived            ${survived} of ${done.length} (run exit code ${status.code})`,
);
console.log(
  `steps aborted and retried  ${aborted} (not released: no privacy spent); ${completed} released steps completed from the ledger`,
);
console.log(
  `ledger entries             ${ledger.length} (undisturbed ${refLedger.length}): ${lost} lost, ${duplicated} duplicated`,
);
console.log(`kill -> next step, worker  ${byKind(only("worker"))}`);
console.log(`kill -> next step, coord   ${byKind(only("coordinator"))}`);
console.log(`kill -> next step, nats    ${byKind(only("nats-server"))}`);
console.log(`kill -> next step, two     ${byKind((d) => d.killed.length === 2)}`);
console.log(
  `wall time                  undisturbed ${refWall.toFixed(0)} s (${
    stepS.toFixed(2)
  } s/step incl. start), under faults ${chaosWall.toFixed(0)} s: +${
    ((chaosWall - refWall) / Math.max(1, done.length)).toFixed(1)
  } s per fault`,
);
console.log(
  `final weights identical    ${
    summary.final_weights_sha256 === refSummary.final_weights_sha256 ? "yes" : "NO"
  } (${summary.final_weights_sha256?.slice(0, 16) ?? "none"} vs ${
    refSummary.final_weights_sha256.slice(0, 16)
  })`,
);
console.log(`ledger identical           ${sameLedger ? "yes" : "NO"}`);
console.log(
  `epsilon identical          ${
    summary.epsilon === refSummary.epsilon ? "yes" : "NO"
  } (${summary.epsilon} vs ${refSummary.epsilon})`,
);
if (!values.keep && !values.out && status.success && sameLedger) {
  await Deno.remove(out, { recursive: true }).catch(() => {});
}
const ok = status.success && survived === done.length && sameLedger && duplicated === 0 &&
  summary.final_weights_sha256 === refSummary.final_weights_sha256;
Deno.exit(ok ? 0 : 1);
