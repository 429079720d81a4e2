/**
 * `dpzo export --run DIR --out DIR [--adapter-only]`: base checkpoint + ledger -> a Hugging Face
 * checkpoint (for LoRA runs the merged model, its PEFT adapter in `adapter/`), the sha256 of every
 * file written (`SHA256SUMS`), and `final_weights_sha256`, checked against the run's summary.json.
 */
import { Command } from "@commander-js/extra-typings";
import { CHECKSUMS_FILE, exportRun } from "../export.ts";

export function exportCommand() {
  return new Command("export")
    .description("replay a run's ledger onto its base checkpoint and write the fine-tuned model")
    .requiredOption("--run <dir>", "run directory written by dpzo train")
    .requiredOption("--out <dir>", "output directory (Hugging Face layout)")
    .option(
      "--adapter-only",
      "LoRA runs: write only the PEFT adapter (adapter_config.json, adapter_model.safetensors)",
    )
    .action(async (opts) => {
      const r = await exportRun(opts.run, opts.out, undefined, {
        adapterOnly: opts.adapterOnly,
      });
      console.log(`wrote ${opts.out} (${r.steps} steps replayed):`);
      const width = Math.max(...r.files.map((f) => f.file.length));
      for (const f of r.files) {
        const note = f.file === "model.safetensors" && r.merged
          ? "  (LoRA merged: W + (alpha/r) B A on q_proj/v_proj)"
          : "";
        console.log(`  ${f.file.padEnd(width)}  sha256 ${f.sha256}${note}`);
      }
      console.log(`check the files: (cd ${opts.out} && sha256sum -c ${CHECKSUMS_FILE})`);
      const check = r.run_final_weights_sha256 === null
        ? "the run has no summary.json to compare with"
        : r.run_final_weights_sha256 === r.final_weights_sha256
        ? "equal to the run's summary.json"
        : `DIFFERS from the run's summary.json (${r.run_final_weights_sha256})`;
      console.log(`final_weights_sha256: ${r.final_weights_sha256} (${check})`);
      console.log(
        "  = SHA-256 over the SHA-256 of each trained float32 tensor in canonical order" +
          (r.merged || r.files.some((f) => f.file.endsWith("adapter_config.json"))
            ? " (the base weights, then the adapter's A and B, before merging)"
            : "") +
          "; a hash of the replayed weights, not of a file (README, Export)",
      );
      if (
        r.run_final_weights_sha256 !== null && r.run_final_weights_sha256 !== r.final_weights_sha256
      ) {
        throw new Error(
          `the replayed weights differ from the run's (summary.json); is the base checkpoint ` +
            `the one the run used?`,
        );
      }
    });
}
