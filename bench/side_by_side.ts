/**
 * dpzo vs. PyTorch (MeZO), side by side in one run on this machine: `dpzo bench` and
 * `../shared/bench/torch_mezo_step.py` on the same model and batch shape, interleaved round by
 * round (so both see the same machine load), then the ratios.
 *
 *   deno run -A bench/side_by_side.ts [--model ../shared/fixtures/small-opt] [--batch 16]
 *     [--seq-len 64] [--steps 3] [--rounds 2] [--threads 2] [--target-tokens 1] [--json]
 *
 * Rows:
 * - "all positions": dpzo with the loss at every position, the same work as the PyTorch script
 *   (which always computes the LM head at every position);
 * - "target tokens": dpzo with the loss on only the last `--target-tokens` positions of each row
 *   (a task whose answer is those tokens: dpzo runs the LM head only there; MeZO on PyTorch still
 *   computes it everywhere, which is what its users run).
 *
 * PyTorch runs with glibc's malloc told to keep freed memory (`MALLOC_MMAP_THRESHOLD_`,
 * `MALLOC_TRIM_THRESHOLD_`, `MALLOC_TOP_PAD_`; `--torch-malloc default` turns that off). By
 * default glibc hands every large block (the 200 MB logits, each parameter's z) back to the
 * system and faults it in again on the next step; on this VM that made PyTorch's step 3-4x
 * slower (2.7-3.4 s instead of 0.73 s, most of it system time), which would flatter dpzo.
 * Keeping the memory is what a tuned PyTorch setup (jemalloc, tcmalloc) does.
 *
 * dpzo runs with the same runtime flags as `deno task dpzo` (V8's young generation capped).
 *
 * Each figure is the best (minimum) over rounds, and the ratios are also printed round by round
 * (their spread is the machine's noise); peak RSS is the process high-water mark
 * (VmHWM for dpzo, ru_maxrss for PyTorch), also shown relative to the float32 weight bytes.
 * PyTorch comes from Debian's python3-torch and runs with /usr/bin/python3. Debian's torch does
 * its matMuls through the system `libblas.so.3`: with only the reference BLAS (libblas3)
 * installed it is ~10x slower than a real PyTorch setup (small-opt: ~13 s per step instead of
 * ~1 s), so the script checks which BLAS is linked and warns; install an optimized one with
 * `apt-get install -y libopenblas0-openmp` (it takes over libblas.so.3 through alternatives).
 */
import { parseArgs } from "node:util";
import { DPZO_RUNTIME_FLAGS } from "../cluster/launcher.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: {
      type: "string",
      default: new URL("../../shared/fixtures/small-opt", import.meta.url).pathname,
    },
    batch: { type: "string", default: "16" },
    "seq-len": { type: "string", default: "64" },
    steps: { type: "string", default: "3" },
    rounds: { type: "string", default: "2" },
    threads: { type: "string", default: "2" },
    "target-tokens": { type: "string", default: "1" },
    python: { type: "string", default: "/usr/bin/python3" },
    "torch-malloc": { type: "string", default: "keep" },
    "torch-script": {
      type: "string",
      default: new URL("../../shared/bench/torch_mezo_step.py", import.meta.url).pathname,
    },
    json: { type: "boolean", default: false },
  },
});

const root = new URL("../", import.meta.url).pathname;
const common = [
  "--model",
  values.model!,
  "--batch",
  values.batch!,
  "--seq-len",
  values["seq-len"]!,
];

interface Figures {
  forward_s: number;
  perturb_pass_s: number;
  step_s: number;
  peak_rss_bytes: number;
  weight_bytes_f32: number;
  rss_before_load_bytes?: number;
  wasm_heap_bytes?: number;
  activation_peak_bytes?: number;
  matmul?: string;
}

async function run(
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; out: string; err: string }> {
  const p = await new Deno.Command(cmd, { args, cwd: root, env, stdout: "piped", stderr: "piped" })
    .output();
  const dec = new TextDecoder();
  return { code: p.code, out: dec.decode(p.stdout), err: dec.decode(p.stderr) };
}

function lastJson(text: string): Record<string, unknown> {
  const line = text.trim().split("\n").reverse().find((l) => l.startsWith("{"));
  if (!line) throw new Error(`no JSON line in:\n${text.slice(-2000)}`);
  return JSON.parse(line);
}

// Runs the PyTorch script in-process under runpy and reports its peak RSS on stderr.
const TORCH_WRAPPER = `
import json, resource, runpy, sys
script = sys.argv[1]
sys.argv = sys.argv[1:]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    print("PEAK_RSS_KB " + str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss), file=sys.stderr)
`;

/** glibc malloc settings that keep freed memory in the process (see the module comment). */
const KEEP_FREED_MEMORY = {
  MALLOC_MMAP_THRESHOLD_: String(4 * 2 ** 30),
  MALLOC_TRIM_THRESHOLD_: String(64 * 2 ** 30),
  MALLOC_TOP_PAD_: String(2 ** 30),
};

async function torchAvailable(): Promise<string | undefined> {
  try {
    const r = await run(values.python!, ["-c", "import torch, numpy; print(torch.__version__)"]);
    return r.code === 0 ? r.out.trim() : undefined;
  } catch {
    return undefined;
  }
}

async function torchRound(): Promise<Figures> {
  const r = await run(values.python!, [
    "-c",
    TORCH_WRAPPER,
    values["torch-script"]!,
    ...common,
    "--threads",
    values.threads!,
    "--steps",
    values.steps!,
  ], values["torch-malloc"] === "default" ? {} : KEEP_FREED_MEMORY);
  if (r.code !== 0) throw new Error(`PyTorch reference failed:\n${r.err.slice(-2000)}`);
  const j = lastJson(r.out);
  const kb = Number(r.err.match(/PEAK_RSS_KB (\d+)/)?.[1] ?? NaN);
  return {
    forward_s: j.forward_s as number,
    perturb_pass_s: j.perturb_pass_s as number,
    step_s: j.mean_step_s as number,
    peak_rss_bytes: kb * 1024,
    weight_bytes_f32: (j.params as number) * 4,
  };
}

async function dpzoRound(targetTokens?: string): Promise<Figures> {
  const extra = targetTokens ? ["--target-tokens", targetTokens] : [];
  const r = await run(Deno.execPath(), [
    "run",
    ...DPZO_RUNTIME_FLAGS,
    "cluster/main.ts",
    "bench",
    ...common,
    "--steps",
    values.steps!,
    ...extra,
    "--json",
  ]);
  if (r.code !== 0) throw new Error(`dpzo bench failed:\n${r.err.slice(-2000)}`);
  return lastJson(r.out) as unknown as Figures;
}

function best(rs: Figures[]): Figures {
  const min = (k: keyof Figures) => Math.min(...rs.map((r) => r[k] as number));
  return {
    forward_s: min("forward_s"),
    perturb_pass_s: min("perturb_pass_s"),
    step_s: min("step_s"),
    peak_rss_bytes: Math.max(...rs.map((r) => r.peak_rss_bytes)),
    weight_bytes_f32: rs[0].weight_bytes_f32,
    rss_before_load_bytes: rs[0].rss_before_load_bytes,
    wasm_heap_bytes: rs[0].wasm_heap_bytes,
    // the smallest: the budget below grows with it
    activation_peak_bytes: Math.min(...rs.map((r) => r.activation_peak_bytes ?? Infinity)),
    matmul: rs[0].matmul,
  };
}

const torchVersion = await torchAvailable();
if (!torchVersion) {
  console.error(
    `PyTorch is not importable by ${values.python}. On Debian 12 install it with\n` +
      `  apt-get update && apt-get install -y python3-torch\n` +
      `(it provides torch and numpy for /usr/bin/python3), then rerun this script.`,
  );
  Deno.exit(2);
}

/** The BLAS that /usr/lib's libblas.so.3 resolves to (Debian alternatives), if it can be read. */
function systemBlas(): string | undefined {
  for (const link of ["/etc/alternatives/libblas.so.3-x86_64-linux-gnu", "/usr/lib/libblas.so.3"]) {
    try {
      return Deno.realPathSync(link);
    } catch { /* not this layout */ }
  }
  return undefined;
}
const blas = systemBlas();
const referenceBlas = blas !== undefined && !/openblas|blis|mkl|atlas/i.test(blas);
if (referenceBlas) {
  console.error(
    `warning: libblas.so.3 is ${blas} (the reference BLAS): PyTorch's matMuls will be ~10x ` +
      `slower than with an optimized BLAS and the ratios below flatter dpzo. Install one with ` +
      `apt-get install -y libopenblas0-openmp`,
  );
}

const rounds = Number(values.rounds);
const torch: Figures[] = [], all: Figures[] = [], task: Figures[] = [];
for (let i = 0; i < rounds; i++) {
  console.error(`round ${i + 1}/${rounds}: PyTorch ${torchVersion} ...`);
  torch.push(await torchRound());
  console.error(`round ${i + 1}/${rounds}: dpzo, loss at every position ...`);
  all.push(await dpzoRound());
  console.error(`round ${i + 1}/${rounds}: dpzo, loss on the last ${values["target-tokens"]} ...`);
  task.push(await dpzoRound(values["target-tokens"]));
}
const t = best(torch), a = best(all), k = best(task);
const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
const rows: [string, Figures][] = [
  [
    `PyTorch ${torchVersion} (${values.threads} threads${
      values["torch-malloc"] === "default" ? ", default malloc" : ""
    })`,
    t,
  ],
  ["dpzo, loss at every position", a],
  [`dpzo, loss on last ${values["target-tokens"]} token(s)/row`, k],
];
const load = Deno.loadavg()[0];
console.log(`PyTorch BLAS: ${blas ?? "unknown"}${referenceBlas ? " (REFERENCE BLAS: slow)" : ""}`);
console.log(
  `model ${values.model}, batch ${values.batch} x ${values["seq-len"]} tokens, ` +
    `${values.steps} steps x ${rounds} rounds (best of rounds), load average ${load.toFixed(2)}`,
);
console.log(
  "".padEnd(44) + "forward".padStart(10) + "perturb".padStart(10) + "step".padStart(10) +
    "peak RSS".padStart(11) + "x f32 w".padStart(9),
);
for (const [name, f] of rows) {
  console.log(
    name.padEnd(44) + `${f.forward_s.toFixed(3)} s`.padStart(10) +
      `${f.perturb_pass_s.toFixed(3)} s`.padStart(10) + `${f.step_s.toFixed(3)} s`.padStart(10) +
      mib(f.peak_rss_bytes).padStart(11) +
      (f.peak_rss_bytes / f.weight_bytes_f32).toFixed(2).padStart(9),
  );
}
const ratios = {
  step_all_positions: a.step_s / t.step_s,
  step_target_tokens: k.step_s / t.step_s,
  forward_all_positions: a.forward_s / t.forward_s,
  forward_target_tokens: k.forward_s / t.forward_s,
  perturb_pass: a.perturb_pass_s / t.perturb_pass_s,
  peak_rss_over_f32_weights_dpzo: a.peak_rss_bytes / a.weight_bytes_f32,
  peak_rss_over_f32_weights_torch: t.peak_rss_bytes / t.weight_bytes_f32,
  dpzo_rss_above_runtime_over_f32_weights: a.rss_before_load_bytes === undefined
    ? undefined
    : (a.peak_rss_bytes - a.rss_before_load_bytes) / a.weight_bytes_f32,
};
console.log(
  `ratios dpzo / PyTorch: step ${ratios.step_all_positions.toFixed(2)} (all positions), ` +
    `${ratios.step_target_tokens.toFixed(2)} (target tokens); forward ` +
    `${ratios.forward_all_positions.toFixed(2)} / ${ratios.forward_target_tokens.toFixed(2)}; ` +
    `perturbation pass ${ratios.perturb_pass.toFixed(2)}`,
);
// The same ratios round by round: each round runs the three back to back, so they saw about the
// same machine; the spread says how much of a ratio is noise.
const perRound = (f: (i: number) => number) => torch.map((_, i) => f(i).toFixed(2)).join(" ");
console.log(
  `per round, step: ${perRound((i) => all[i].step_s / torch[i].step_s)} (all positions); ` +
    `${perRound((i) => task[i].step_s / torch[i].step_s)} (target tokens); perturbation pass ` +
    `${perRound((i) => all[i].perturb_pass_s / torch[i].perturb_pass_s)}`,
);
// Memory: what dpzo holds beyond the runtime it starts with, against 1.5 x the float32 weights
// plus the activations: the most tensor bytes live at once in a forward (hidden states, q/k/v,
// the LM head's input). The heap's allocator slack and the threads' blocks of LM-head logits
// are not counted as activations, so they must fit in the 0.5 x weights.
let memory: Record<string, number> | undefined;
if (a.rss_before_load_bytes !== undefined && a.activation_peak_bytes !== undefined) {
  const above = a.peak_rss_bytes - a.rss_before_load_bytes;
  const activations = a.activation_peak_bytes;
  const budget = 1.5 * a.weight_bytes_f32 + activations;
  memory = { above_runtime_bytes: above, activations_bytes: activations, budget_bytes: budget };
  console.log(
    `dpzo peak RSS ${mib(a.peak_rss_bytes)} = runtime before loading ` +
      `${mib(a.rss_before_load_bytes)} + ${mib(above)} ` +
      `(${(above / a.weight_bytes_f32).toFixed(2)} x float32 weights); budget 1.5 x weights ` +
      `${mib(1.5 * a.weight_bytes_f32)} + activations ${mib(activations)} = ${mib(budget)}: ` +
      (above <= budget ? "within" : "OVER"),
  );
}
console.log(`dpzo matMul: ${a.matmul ?? "unknown"}`);
if (values.json) {
  console.log(
    JSON.stringify({ torch: t, dpzo_all: a, dpzo_target: k, ratios, memory, blas, load }),
  );
}
