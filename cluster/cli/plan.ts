/**
 * `dpzo plan --model M --nodes N --memory-gb G [--json]` (or `--config FILE`): the stage split,
 * memory per worker, traffic and estimated step time of a run, from the model's config.json
 * alone (cluster/plan.ts). Refuses, with the fix, a model that fits no split.
 */
import { Command, Option } from "@commander-js/extra-typings";
import { z } from "zod";
import { loadRunConfig, type RunConfig } from "../../src/dpzo/config.ts";
import { STORAGE_DTYPES } from "../../src/model/weights.ts";
import { MAX_THREADS } from "../../src/cores/mod.ts";
import { UsageError } from "../../src/validation.ts";
import { formatPlan, GiB, loadModelConfig, planRequest, planRun } from "../plan.ts";
import { measureMachine } from "../step_time.ts";
import { defaultRunId } from "../launcher.ts";
import { flag, positiveInt, startBackend } from "./common.ts";

const positiveNumber = z.coerce.number({ error: "expected a number" }).positive({
  error: "expected a number above 0",
});
const threadCount = positiveInt.max(MAX_THREADS, { error: `at most ${MAX_THREADS}` });

export function planCommand() {
  return new Command("plan")
    .description(
      "plan a run from the model's config.json alone: stage split, memory per worker, traffic, " +
        "step time",
    )
    .option("--model <dir|id>", "model directory, its config.json, or Hub id (only config.json)")
    .option(
      "--config <file>",
      "take model, dtype, mode, batch, micro-batch, seq-len (task.max_length), stages and " +
        "replicas from a run config; flags override",
    )
    .requiredOption("--nodes <N>", "nodes (machines), one stage worker each")
    .requiredOption("--memory-gb <G>", "memory of each node, in GiB (2^30 bytes)")
    .option("--stages <K>", "force K pipeline stages (default: the fewest that fit)")
    .option("--replicas <R>", "replica groups (default: floor(nodes / stages))")
    .addOption(new Option("--dtype <dtype>", "weight storage (default float32)").choices(
      STORAGE_DTYPES,
    ))
    .addOption(new Option("--mode <mode>", "full or lora (default full)").choices(["full", "lora"]))
    .option("--lora-rank <r>", "with --mode lora (default 8)")
    .option("--batch <n>", "expected examples per step, train.batch_size (default 16)")
    .option("--micro-batch <n>", "examples per micro-batch, cluster.micro_batch (default 16)")
    .option("--seq-len <n>", "tokens per example, task.max_length (default 128)")
    .addOption(
      new Option("--activation-dtype <dtype>", "hidden states on the wire (default float32)")
        .choices(["float32", "float16"]),
    )
    .option("--threads <n>", `threads per worker on the nodes (memory only)`, String(MAX_THREADS))
    .option("--no-step-time", "skip the measurement of this machine (memory and traffic only)")
    .option("--json", "print the plan as one JSON object")
    .action(async (opts) => {
      if (!opts.model && !opts.config) {
        throw new UsageError("plan: give --model DIR|ID or --config FILE");
      }
      const config: RunConfig | undefined = opts.config
        ? await loadRunConfig(opts.config)
        : undefined;
      const modelName = opts.model ?? config!.model;
      const model = await loadModelConfig(modelName, { field: opts.model ? "--model" : "model" });
      const int = (name: string, v: string | undefined) =>
        v === undefined ? undefined : flag(name, positiveInt, v);
      const req = planRequest(
        model,
        modelName,
        {
          nodes: flag("--nodes", positiveInt, opts.nodes),
          nodeBytes: flag("--memory-gb", positiveNumber, opts.memoryGb) * GiB,
          stages: int("--stages", opts.stages),
          replicas: int("--replicas", opts.replicas),
          dtype: opts.dtype,
          mode: opts.mode as "full" | "lora" | undefined,
          loraRank: int("--lora-rank", opts.loraRank),
          batchSize: int("--batch", opts.batch),
          microBatch: int("--micro-batch", opts.microBatch),
          seqLen: int("--seq-len", opts.seqLen),
          activationDtype: opts.activationDtype as "float32" | "float16" | undefined,
          threads: flag("--threads", threadCount, opts.threads),
        },
        config,
        config ? defaultRunId(config) : undefined,
      );
      // Memory first (refuses without measuring), then the measurement at the plan's width.
      planRun(req);
      let speed;
      if (opts.stepTime) {
        await startBackend("wasm");
        console.error("plan: measuring one decoder layer and the perturbation pass here...");
        speed = measureMachine(model, req.microBatch * req.seqLen);
      }
      const plan = planRun(req, speed);
      if (opts.json) console.log(JSON.stringify(plan));
      else for (const line of formatPlan(plan)) console.log(line);
    });
}
