/**
 * `dpzo bench --model DIR|ID --batch B --seq-len S --steps N [--target-tokens N] [--json]`:
 * times forward, perturbation pass and a whole ZO step on random tokens.
 */
import { Command } from "@commander-js/extra-typings";
import { benchStep } from "../bench.ts";
import { backendOption, dtypeOption, flag, positiveInt, startBackend } from "./common.ts";
import { resolveModelDir } from "../../src/hub/mod.ts";

export function benchCommand() {
  return new Command("bench")
    .description("time a DP-ZO step (forward, perturbation pass, whole step) on random tokens")
    .requiredOption(
      "--model <dir|id>",
      "OPT checkpoint directory, or Hub id[@revision] (e.g. facebook/opt-125m), fetched once",
    )
    .option("--batch <n>", "rows per batch", "16")
    .option("--seq-len <n>", "tokens per row", "64")
    .option("--steps <n>", "timed steps (after one warm-up step)", "5")
    .option("--target-tokens <n>", "loss on only the last N positions of each row (default: all)")
    .option("--json", "print one JSON line")
    .addOption(backendOption())
    .addOption(dtypeOption())
    .action(async (opts) => {
      const batch = flag("--batch", positiveInt, opts.batch);
      const seqLen = flag("--seq-len", positiveInt, opts.seqLen);
      const steps = flag("--steps", positiveInt, opts.steps);
      const targetTokens = opts.targetTokens === undefined
        ? undefined
        : flag("--target-tokens", positiveInt, opts.targetTokens);
      await startBackend(opts.backend);
      const model = await resolveModelDir(opts.model);
      const r = await benchStep(
        { model, batch, seqLen, steps, targetTokens, dtype: opts.dtype },
        (l) => console.error(l),
      );
      if (opts.json) {
        console.log(JSON.stringify({ ...r, backend: opts.backend }));
        return;
      }
      console.log(
        `model ${r.model}: ${r.params} parameters stored as ${r.dtype}, batch ${r.batch} x ` +
          `${r.seq_len} tokens`,
      );
      const peak = r.sgemm_peak_gflops
        ? `, ${(100 * r.forward_gflops / r.sgemm_peak_gflops).toFixed(0)}% of OpenBLAS' ` +
          `${r.sgemm_peak_gflops.toFixed(0)} GFLOP/s here`
        : "";
      console.log(
        `forward + losses (${r.target_tokens} targets/row): ${r.forward_s.toFixed(3)} s ` +
          `(${r.forward_gflops.toFixed(0)} GFLOP/s${peak})`,
      );
      console.log(
        `perturbation pass: ${r.perturb_pass_s.toFixed(3)} s (${
          (r.perturb_params_per_s / 1e6).toFixed(0)
        }M parameters/s)`,
      );
      console.log(`ZO step: ${r.step_s.toFixed(3)} s`);
      const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
      const above = r.peak_rss_bytes - r.rss_before_load_bytes;
      console.log(
        `peak RSS: ${mib(r.peak_rss_bytes)} = runtime ${mib(r.rss_before_load_bytes)} + ` +
          `${mib(above)} (${(above / r.weight_bytes_f32).toFixed(2)} x float32 weights, ` +
          `${(above / r.stored_weight_bytes).toFixed(2)} x stored weights); ` +
          `activations at most ${mib(r.activation_peak_bytes)} live`,
      );
    });
}
