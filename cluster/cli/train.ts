/**
 * `dpzo train --config FILE [--set key=value ...] [--quiet]`: a DP-ZO run on the embedded
 * default (coordinator and stage workers in this process).
 *
 * `dpzo train --resume RUN_DIR`: continues a run that stopped (the coordinator died, Ctrl-C)
 * from its ledger; with `--nats URL` the run is a sharded one and this process is its
 * coordinator again: the workers still running re-join it and replay what they miss.
 */
import { Command } from "@commander-js/extra-typings";
import { loadRunConfig } from "../../src/dpzo/config.ts";
import { resumeEmbedded, trainEmbedded } from "../run.ts";
import { UsageError } from "../../src/validation.ts";
import { RunId } from "../protocol.ts";
import { flag, printSummary, setsFromEnv } from "./common.ts";
import { securityOf } from "./launch.ts";
import { watchSignals } from "../interruption.ts";
import { checkFitsThisMachine } from "../plan.ts";

const collect = (v: string, prev: string[]) => [...prev, v];

export function trainCommand() {
  return new Command("train")
    .description("fine-tune with DP-ZO on the embedded default (one process)")
    .option(
      "--config <file>",
      "run configuration (YAML or JSON), e.g. configs/tiny-sst2.yaml",
    )
    .option("--resume <run_dir>", "continue a stopped run from its ledger")
    .option("--nats <url>", "with --resume: the sharded run's nats-server (coordinator only)")
    .option("--run <id>", "with --resume --nats: the run id (default: the run directory's name)")
    .option(
      "--set <key=value>",
      "override a config field, e.g. --set train.steps=100 (repeatable)",
      collect,
      [] as string[],
    )
    .option("--quiet", "plain progress lines every 30 s instead of a live bar")
    .action(async (opts) => {
      if (!opts.resume && !opts.config) {
        throw new UsageError("train: give --config FILE (a new run) or --resume RUN_DIR");
      }
      if (opts.resume && (opts.config || opts.set.length)) {
        throw new UsageError(
          "train --resume: the run's own run.json is its config; drop --config/--set",
        );
      }
      if (opts.nats && !opts.resume) throw new UsageError("--nats: only with --resume");
      let s, runDir = opts.resume ?? "";
      // Ctrl-C / SIGTERM: the run stops at a safe point and says how to continue.
      const signals = watchSignals();
      const interrupt = signals.signal;
      try {
        if (opts.resume && opts.nats) {
          const { resumeOverNats } = await import("../launcher.ts");
          const run = opts.run === undefined ? undefined : flag("--run", RunId, opts.run);
          // Credentials and TLS come from DPZO_NATS_* / DPZO_RUN_KEY, as the launcher hands them to
          // its children (README "Security"); `dpzo coordinate --resume` also takes them as flags.
          s = await resumeOverNats(opts.resume, {
            url: opts.nats,
            run,
            quiet: opts.quiet,
            security: securityOf({}, opts.nats),
            interrupt,
            continueWith: `dpzo train --resume ${opts.resume} --nats ${opts.nats}, and start ` +
              `the workers again`,
          });
        } else if (opts.resume) {
          s = await resumeEmbedded(opts.resume, { quiet: opts.quiet, interrupt });
        } else {
          const config = await loadRunConfig(opts.config!, opts.set, setsFromEnv());
          runDir = config.run_dir;
          // The whole model in this process: refused before anything starts if it cannot fit.
          await checkFitsThisMachine(config, {
            command: "train",
            configPath: opts.config,
            split: { stages: 1, replicas: 1 },
          });
          s = await trainEmbedded(config, { quiet: opts.quiet, interrupt });
        }
      } finally {
        signals.dispose();
      }
      printSummary(runDir, s);
    });
}
