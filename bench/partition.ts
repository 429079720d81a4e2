/**
 * A partition of one worker: configs/tiny-sst2.yaml (insecure_seed) with K = 2 stages, each
 * worker behind its own link (bench/proxied_cluster.ts); at step `--at` the link of one worker
 * (the last started; which stage it holds depends on the order they joined) forwards nothing
 * for `--stall-s` seconds (TCP stays up, as in a real partition that heals). The run must finish with the final weights and the ledger of the same run
 * undisturbed, every step once. Prints the timings and what the coordinator said:
 *
 *   deno run -A bench/partition.ts [--steps 60] [--at 15] [--stall-s 30]
 *     [--heartbeat-timeout-s S] [--topology K=2|R=2|K=2xR=2] [--timeout-s 300] [--drop]
 *     [--verbose]
 *
 * With a heartbeat timeout under the stall the coordinator declares the worker lost mid-stall;
 * the worker must then join again (or a replacement take its slot) and replay the ledger. With
 * `--drop` the link's connections are also closed as the stall begins (the worker's reconnects
 * hang until it heals, as when TCP gives up during a partition).
 */
import { parseArgs } from "node:util";
import { z } from "zod";
import { proxiedRun, type ProxiedRunResult } from "./proxied_cluster.ts";
import type { LinkProxy } from "./link_proxy.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    steps: { type: "string", default: "60" },
    at: { type: "string", default: "15" },
    "stall-s": { type: "string", default: "30" },
    "heartbeat-timeout-s": { type: "string" },
    topology: { type: "string", default: "K=2" },
    "timeout-s": { type: "string", default: "300" },
    drop: { type: "boolean", default: false },
    verbose: { type: "boolean", default: false },
  },
});
const Flags = z.object({
  steps: z.coerce.number().int().min(2),
  at: z.coerce.number().int().min(1),
  "stall-s": z.coerce.number().positive(),
  "heartbeat-timeout-s": z.coerce.number().positive().optional(),
  topology: z.enum(["K=2", "R=2", "K=2xR=2"]),
  "timeout-s": z.coerce.number().positive(),
}).refine((f) => f.at < f.steps, { error: "--at must be below --steps", path: ["at"] });
const parsed = Flags.safeParse(values);
if (!parsed.success) {
  const i = parsed.error.issues[0];
  console.error(`partition: --${i.path.join(".")}: ${i.message}`);
  Deno.exit(2);
}
const o = parsed.data;
const topology = {
  "K=2": { sets: ["cluster.stages=2"], workers: 2 },
  "R=2": { sets: ["cluster.replicas=2"], workers: 2 },
  "K=2xR=2": { sets: ["cluster.stages=2", "cluster.replicas=2"], workers: 4 },
}[o.topology];
const sets = [
  `train.steps=${o.steps}`,
  "train.eval_every=0",
  "task.val_examples=4",
  "task.test_examples=4",
  "insecure_seed=11",
  "cluster.micro_batch=8",
  ...topology.sets,
  ...(o["heartbeat-timeout-s"] ? [`cluster.heartbeat_timeout_s=${o["heartbeat-timeout-s"]}`] : []),
];

const ledgerText = async (runDir: string) =>
  await Deno.readTextFile(`${runDir}/ledger.jsonl`).catch(() => "");
/** The ledger without what differs between equal runs (time, check). */
const ledger = async (runDir: string) =>
  (await ledgerText(runDir)).trim().split("\n").map((l) => {
    const { time: _t, check: _c, ...rest } = JSON.parse(l);
    return rest as Record<string, unknown> & { step: number };
  });

const dir = await Deno.makeTempDir({ prefix: "dpzo-partition-" });
const echo = values.verbose ? (l: string) => console.error(l) : undefined;
console.log(
  `${o.topology} of configs/tiny-sst2.yaml, ${o.steps} steps, insecure_seed; heartbeat timeout ` +
    `${o["heartbeat-timeout-s"] ?? "the config's default"} s; each worker behind its own link`,
);

const calm = await proxiedRun({
  run: "calm",
  runDir: `${dir}/calm`,
  sets,
  workers: topology.workers,
  shape: null,
  echo,
});
if (calm.code !== 0) throw new Error(`the undisturbed run failed:\n${calm.log.join("\n")}`);
console.log(`undisturbed: ${calm.wallS.toFixed(1)} s`);

/** When each ledger step appeared (s since start), watched while the disturbed run goes on. */
const seen = new Map<number, number>();
let stallFrom = NaN, stallTo = NaN;
const t0 = performance.now();
const now = () => (performance.now() - t0) / 1000;
let watching = true;
const runDir = `${dir}/cut`;
const victim = topology.workers - 1;
const watch = async (links: LinkProxy[]) => {
  while (watching) {
    const n = (await ledgerText(runDir)).split("\n").filter((l) => l).length;
    for (let s = 1; s <= n; s++) if (!seen.has(s)) seen.set(s, now());
    if (n >= o.at && Number.isNaN(stallFrom)) {
      stallFrom = now();
      console.log(
        `${stallFrom.toFixed(1)} s: step ${n} in the ledger; ${
          values.drop ? "dropping and " : ""
        }stalling w${victim}'s link`,
      );
      if (values.drop) links[victim].drop();
      links[victim].stall(o["stall-s"] * 1000).then(() => {
        stallTo = now();
        console.log(`${stallTo.toFixed(1)} s: w${victim}'s link forwards again`);
      });
    }
    await new Promise((r) => setTimeout(r, 50));
  }
};
let watcher: Promise<void> = Promise.resolve();
const cut: ProxiedRunResult = await proxiedRun({
  run: "cut",
  runDir,
  sets,
  workers: topology.workers,
  shape: null,
  echo,
  started: (links) => (watcher = watch(links)),
  timeoutS: o["timeout-s"],
});
watching = false;
await watcher;

const said = cut.log.filter((l) =>
  /lost|joined|ready|replac|waiting|abort|recover|again|bench \||exited|error|heartbeat/i.test(l)
);
console.log("what the processes said (s since the disturbed run started):");
for (const l of said) console.log(`  ${l}`);
if (cut.code !== 0) {
  console.log(cut.log.slice(-20).join("\n"));
  console.log(`NOT SURVIVED: the run exited with ${cut.code}`);
  Deno.exit(1);
}
const a = await ledger(`${dir}/calm`), b = await ledger(runDir);
const steps = b.map((e) => e.step);
const once = steps.every((s, i) => s === i + 1);
const same = JSON.stringify(a) === JSON.stringify(b);
const ha = JSON.parse(await Deno.readTextFile(`${dir}/calm/summary.json`)).final_weights_sha256;
const hb = JSON.parse(await Deno.readTextFile(`${runDir}/summary.json`)).final_weights_sha256;
const after = [...seen].filter(([, t]) => t > stallFrom).sort((x, y) => x[0] - y[0]);
const firstAfterHeal = [...seen].filter(([, t]) => t >= stallTo).sort((x, y) => x[0] - y[0])[0];
console.log(
  [
    `disturbed: ${cut.wallS.toFixed(1)} s (+${(cut.wallS - calm.wallS).toFixed(1)} s over ` +
    `${calm.wallS.toFixed(1)} s undisturbed; the stall was ${o["stall-s"]} s)`,
    `first step after the stall began: ${
      after.length ? `step ${after[0][0]} at ${after[0][1].toFixed(1)} s` : "none"
    }`,
    `first step after the link healed: ${
      firstAfterHeal
        ? `step ${firstAfterHeal[0]}, ${(firstAfterHeal[1] - stallTo).toFixed(1)} s after`
        : "none"
    }`,
    `worker processes started again: ${cut.restarts}`,
    `ledger: ${b.length} entries (expected ${o.steps}), each step once: ${once}, ` +
    `equal to the undisturbed ledger: ${same}`,
    `final_weights_sha256: ${hb.slice(0, 16)} vs ${ha.slice(0, 16)} undisturbed: ${
      ha === hb ? "identical" : "DIFFERENT"
    }`,
  ].join("\n"),
);
const ok = once && same && ha === hb && b.length === o.steps;
console.log(ok ? "SURVIVED" : "NOT SURVIVED");
await Deno.remove(dir, { recursive: true });
Deno.exit(ok ? 0 : 1);
