/**
 * What a slow link costs: the step time of configs/tiny-sst2.yaml (insecure_seed) with R = 2
 * replica groups and with K = 2 stages when each worker reaches nats-server through its own
 * link (bench/link_proxy.ts: latency each way, bandwidth capped each way) at 100, 10 and 1
 * Mbit/s with a 50 ms round trip, against the same proxies unshaped; and K = 2 with float16
 * activations at 1 Mbit/s. The coordinator connects to the server directly (it shares its host).
 * Prints a markdown table (the README's "Slow links") and the bytes per step:
 *
 *   deno run -A bench/slow_links.ts [--steps 20] [--rtt-ms 50] [--rates 100,10,1]
 *     [--only R=2,K=2,K=2 f16] [--f16-rates 1] [--micro-batch 8] [--verbose]
 *
 * Figures are the median `step_s` (metrics.jsonl) over the steps after the first; every run of
 * a topology ends with the same final_weights_sha256 whatever the link (checked).
 */
import { parseArgs } from "node:util";
import { z } from "zod";
import { median, proxiedRun, stepTimes } from "./proxied_cluster.ts";
import type { LinkShape } from "./link_proxy.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    steps: { type: "string", default: "20" },
    "rtt-ms": { type: "string", default: "50" },
    rates: { type: "string", default: "100,10,1" },
    only: { type: "string", default: "R=2,K=2,K=2 f16" },
    "f16-rates": { type: "string", default: "1" },
    "micro-batch": { type: "string", default: "8" },
    verbose: { type: "boolean", default: false },
  },
});
const Rates = z.string().transform((s) => s.split(",").filter((x) => x).map(Number)).pipe(
  z.array(z.number().positive(), { error: "expected Mbit/s like 100,10,1" }),
);
const Flags = z.object({
  steps: z.coerce.number().int().min(2),
  "rtt-ms": z.coerce.number().nonnegative(),
  rates: Rates,
  "f16-rates": Rates,
  "micro-batch": z.coerce.number().int().positive(),
  only: z.string(),
});
const parsed = Flags.safeParse(values);
if (!parsed.success) {
  const i = parsed.error.issues[0];
  console.error(`slow_links: --${i.path.join(".")}: ${i.message}`);
  Deno.exit(2);
}
const o = parsed.data;

const topologies = [
  { name: "R=2", sets: ["cluster.replicas=2"], rates: o.rates },
  { name: "K=2", sets: ["cluster.stages=2"], rates: o.rates },
  {
    name: "K=2 f16",
    sets: ["cluster.stages=2", "cluster.activation_dtype=float16"],
    rates: o["f16-rates"],
  },
].filter((t) => o.only.split(",").includes(t.name));

const dir = await Deno.makeTempDir({ prefix: "dpzo-slow-links-" });
const common = [
  `train.steps=${o.steps}`,
  "train.eval_every=0",
  "task.val_examples=4",
  "task.test_examples=4",
  "insecure_seed=11",
  // Two micro-batches per expected batch of 16: both replica groups work, two are in flight
  // down a pipeline.
  `cluster.micro_batch=${o["micro-batch"]}`,
];
const rows: string[] = [];
const bytesRows: string[] = [];
const kib = (b: number) => (b / 1024).toFixed(1);
console.log(
  `tiny-opt (configs/tiny-sst2.yaml), ${o.steps} steps, batch 16, micro-batch ${
    o["micro-batch"]
  }, ` +
    `${navigator.hardwareConcurrency} ` +
    `cores; each worker behind its own link, the coordinator direct`,
);
for (const t of topologies) {
  let base = NaN, hash = "";
  const shapes: [string, LinkShape | null][] = [
    ["unshaped", null],
    ...t.rates.map((r): [string, LinkShape] => [
      `${r} Mbit/s, ${o["rtt-ms"]} ms RTT`,
      { delayMs: o["rtt-ms"] / 2, mbit: r },
    ]),
  ];
  // float16 rows compare against the float32 unshaped run of K=2 (same topology, same link).
  for (const [link, shape] of shapes) {
    const name = `${t.name.replace(/\W+/g, "-")}-${shape ? shape.mbit : "0"}`;
    const runDir = `${dir}/${name}`;
    const r = await proxiedRun({
      run: name,
      runDir,
      sets: [...common, ...t.sets],
      workers: 2,
      shape,
      echo: values.verbose ? (l) => console.error(`${name} ${l}`) : undefined,
    });
    if (r.code !== 0) {
      console.error(r.log.slice(-30).join("\n"));
      throw new Error(`${t.name} over ${link}: exit code ${r.code}`);
    }
    const times = await stepTimes(runDir);
    const s = median(times.slice(1));
    const summary = JSON.parse(await Deno.readTextFile(`${runDir}/summary.json`));
    if (!hash) hash = summary.final_weights_sha256;
    else if (hash !== summary.final_weights_sha256) {
      throw new Error(`${t.name} over ${link}: the weights differ from the unshaped run`);
    }
    if (Number.isNaN(base)) base = s;
    const wire = r.links.map((l) => (l.up + l.down) / times.length);
    rows.push(
      `| ${t.name.padEnd(7)} | ${link.padEnd(22)} | ${s.toFixed(3).padStart(6)} | ${
        ((s - base) * 1000).toFixed(0).padStart(6)
      } | ${(s / base).toFixed(2).padStart(5)}x | ${
        kib(summary.activation_bytes_per_step).padStart(8)
      } | ${kib(Math.max(...wire)).padStart(8)} |`,
    );
    bytesRows.push(
      `${name}: activations ${summary.activation_bytes_per_step} B/step, param sync ` +
        `${summary.param_sync_bytes_per_step_per_worker} B/step/worker; links up/down ${
          r.links.map((l) => `${l.up}/${l.down}`).join(", ")
        } B over ${times.length} steps (wall ${r.wallS.toFixed(1)} s); sha256 ${
          summary.final_weights_sha256.slice(0, 12)
        }`,
    );
    console.error(`${rows.at(-1)}`);
  }
}
console.log(
  "\n| run     | each worker's link     | step s | +ms    | ratio  | act. KiB | wire KiB |",
);
console.log(
  "| ------- | ---------------------- | -----: | -----: | -----: | -------: | -------: |",
);
for (const r of rows) console.log(r);
console.log(
  "\nact. KiB: activations between stages per step (summary.json); wire KiB: bytes per step on " +
    "the busier worker's link, both ways (the proxy's count, join and evaluation included)",
);
for (const b of bytesRows) console.log(b);
await Deno.remove(dir, { recursive: true });
