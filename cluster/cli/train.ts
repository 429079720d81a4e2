/**
 * `dpzo train --config FILE [--set key=value ...] [--quiet]`: a DP-ZO run on the embedded
 * default (coordinator and stage workers in this process).
 */
import { Command } from "@commander-js/extra-typings";
import { loadRunConfig } from "../../src/dpzo/config.ts";
import { trainEmbedded } from "../run.ts";
import { runPrivacyStatement } from "../../src/report/privacy_statement.ts";

const collect = (v: string, prev: string[]) => [...prev, v];

export function trainCommand() {
  return new Command("train")
    .description("fine-tune with DP-ZO on the embedded default (one process)")
    .requiredOption(
      "--config <file>",
      "run configuration (YAML or JSON), e.g. configs/tiny-sst2.yaml",
    )
    .option(
      "--set <key=value>",
      "override a config field, e.g. --set train.steps=100 (repeatable)",
      collect,
      [] as string[],
    )
    .option("--quiet", "plain progress lines every 30 s instead of a live bar")
    .action(async (opts) => {
      const config = await loadRunConfig(opts.config, opts.set);
      const s = await trainEmbedded(config, { quiet: opts.quiet });
      const acc = (v: number | null) => (v === null ? "-" : `${(v * 100).toFixed(1)}%`);
      console.log(`run: ${config.run_dir}`);
      const f = s.final;
      if (f.test_f1 !== undefined) {
        console.log(
          `F1: val ${acc(f.val_f1 ?? null)}, test ${acc(f.test_f1 ?? null)}; ` +
            `exact match: val ${acc(f.val_em ?? null)}, test ${acc(f.test_em ?? null)}`,
        );
      } else {
        console.log(
          `accuracy: val ${acc(s.final.val_accuracy)}, test ${acc(s.final.test_accuracy)}`,
        );
      }
      // The same sentence as `dpzo privacy` and the report (src/report/privacy_statement.ts).
      console.log(`privacy: ${runPrivacyStatement(s)}`);
      console.log(`final_weights_sha256: ${s.final_weights_sha256}`);
    });
}
