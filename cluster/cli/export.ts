/**
 * `dpzo export --run DIR --out DIR`: base checkpoint + ledger -> a Hugging Face checkpoint, and
 * the sha256 of the final weights (the same value as the run's summary.json).
 */
import { Command } from "@commander-js/extra-typings";
import { exportRun } from "../export.ts";

export function exportCommand() {
  return new Command("export")
    .description("replay a run's ledger onto its base checkpoint and write the fine-tuned model")
    .requiredOption("--run <dir>", "run directory written by dpzo train")
    .requiredOption("--out <dir>", "output directory (Hugging Face layout)")
    .action(async (opts) => {
      const r = await exportRun(opts.run, opts.out);
      console.log(`wrote ${r.files.join(", ")} to ${opts.out} (${r.steps} steps replayed)`);
      console.log(`final_weights_sha256: ${r.final_weights_sha256}`);
    });
}
