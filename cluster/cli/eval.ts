/**
 * `dpzo eval --model DIR [--run RUN_DIR] --task NAME [--data PATH] [--limit N]`: evaluates the
 * base model, or a run's fine-tuned model (its base checkpoint + ledger, replayed as
 * `dpzo export` does), on a task's test split the way MeZO and the paper do, and prints the
 * metric: accuracy for SST-2 / QNLI (argmax over the candidates), F1 and exact match for SQuAD /
 * DROP (greedy generation, at most 50 new tokens, stop at a newline or EOS).
 *
 * With --run the task, data, split sizes, seed and max_length default to the run's config, so
 * the test split is the run's; without it they default to the task's defaults
 * (`../shared/data/<task>`, seed 42, max_length = the model's context). `--limit N` evaluates
 * the first N test examples of that draw.
 */
import { Command, Option } from "@commander-js/extra-typings";
import { openCheckpoint } from "../../src/model/checkpoint.ts";
import { type Stage, wholeModel } from "../../src/model/opt.ts";
import { loadStage } from "../../src/model/load.ts";
import { loadTokenizer } from "../../src/tokenizer/mod.ts";
import { type ExampleRequest, TASK_NAMES, type TaskName } from "../../src/tasks/task.ts";
import { loadTaskSplits, taskKind } from "../../src/tasks/mod.ts";
import { evaluateGeneration } from "../../src/eval/generation.ts";
import { UsageError } from "../../src/validation.ts";
import { createStageWorker } from "../worker.ts";
import { inProcessTransport } from "../transport/in_process.ts";
import { evaluate } from "../coordinator.ts";
import { replayRun } from "../export.ts";
import { backendOption, dtypeOption, flag, positiveInt, startBackend } from "./common.ts";

const DEFAULT_DATA: Record<TaskName, string> = {
  sst2: "../shared/data/sst2",
  qnli: "../shared/data/qnli",
  squad: "../shared/data/squad",
  drop: "../shared/data/drop",
};

export interface EvalReport {
  task: TaskName;
  model: string;
  run: string | null;
  steps: number;
  split: "test";
  examples: number;
  /** Where the test split comes from: the run's draw or the task's defaults, data and seed. */
  split_source: string;
  accuracy?: number;
  loss?: number;
  f1?: number;
  em?: number;
  /** Generation tasks: the first few predictions and their gold answers. */
  samples?: { prediction: string; answers: string[] }[];
}

/** Evaluates a loaded model (one stage) on examples of a task. */
export async function evaluateStage(
  stage: Stage,
  task: TaskName,
  examples: ExampleRequest[],
  tok: Awaited<ReturnType<typeof loadTokenizer>>,
  opts: { batch: number },
): Promise<Pick<EvalReport, "accuracy" | "loss" | "f1" | "em" | "samples">> {
  if (taskKind(task) === "generation") {
    const r = evaluateGeneration(stage, tok, examples, { batchSize: opts.batch });
    return {
      f1: r.f1,
      em: r.em,
      samples: r.predictions.slice(0, 3).map((p, i) => ({
        prediction: p,
        answers: examples[i].generation!.answers,
      })),
    };
  }
  const transport = inProcessTransport([[createStageWorker(stage, [])]]);
  const r = await evaluate(transport, examples, {
    step: 0,
    padId: stage.config.padTokenId,
    microBatch: opts.batch,
  });
  await transport.close();
  return { accuracy: r.accuracy, loss: r.loss };
}

export function evalCommand() {
  return new Command("eval")
    .description("evaluate a base model or a run's model on a task (accuracy, or F1/EM)")
    .option("--model <dir>", "OPT checkpoint directory (the base model; with --run, the run's)")
    .option("--run <dir>", "run directory: evaluate its fine-tuned model (ledger replayed)")
    .addOption(
      new Option("--task <name>", "task (default with --run: the run's)").choices(TASK_NAMES),
    )
    .option(
      "--data <path>",
      "task data file or directory (default: the run's, or ../shared/data/<task>)",
    )
    .option("--limit <n>", "evaluate at most N test examples")
    .option("--batch <n>", "examples per forward pass / generation batch", "8")
    .option("--json", "print one JSON object instead of a line")
    .addOption(backendOption())
    .addOption(dtypeOption())
    .action(async (opts) => {
      const limit = opts.limit === undefined ? undefined : flag("--limit", positiveInt, opts.limit);
      const batch = flag("--batch", positiveInt, opts.batch);
      let stage: Stage, modelDir: string, steps = 0;
      let taskName = opts.task as TaskName | undefined;
      let data = opts.data;
      let sizes = { train: 0, val: 0, test: 1000, seed: 42 };
      let maxLength: number | undefined;
      let runSplit = false; // the run's own test split (its task, data, sizes and seed)
      if (opts.run) {
        const r = await replayRun(opts.run, (l) => console.error(l));
        const t = r.config.task;
        modelDir = r.config.model;
        if (opts.model && (await Deno.realPath(opts.model)) !== (await Deno.realPath(modelDir))) {
          throw new UsageError(`--model: ${opts.model} is not the run's base model ${modelDir}`);
        }
        stage = r.worker.stage;
        steps = r.steps;
        if (taskName === undefined || taskName === t.name) {
          taskName = t.name;
          data ??= t.data;
          sizes = {
            train: t.train_examples,
            val: t.val_examples,
            test: t.test_examples,
            seed: t.split_seed,
          };
          maxLength = t.max_length;
          runSplit = true;
        }
      } else {
        if (!opts.model) throw new UsageError("--model: required (or --run, a run directory)");
        if (!taskName) {
          throw new UsageError("--task: required without --run (sst2, qnli, squad, drop)");
        }
        await startBackend(opts.backend);
        modelDir = opts.model;
        const ckpt = await openCheckpoint(modelDir);
        stage = await loadStage(ckpt, wholeModel(ckpt.config), opts.dtype);
      }
      const task = taskName!;
      data ??= DEFAULT_DATA[task];
      const splitSize = sizes.test; // --limit evaluates the first N of this draw
      if (limit !== undefined) sizes.test = Math.min(sizes.test, limit);
      const tok = await loadTokenizer(modelDir);
      const splits = await loadTaskSplits(
        task,
        data,
        sizes,
        tok,
        maxLength ?? stage.config.maxPositions,
      );
      const examples = splits.test.slice(0, limit);
      // Which test split: a run's is its own seeded draw; without --run, the task's defaults.
      const drawn = `drawn with split_seed ${sizes.seed} from ${data}`;
      const source = runSplit
        ? `the run's test split: task.test_examples ${splitSize}, ${drawn}`
        : `the task's default test split: up to ${splitSize} examples ${drawn}`;
      const cut = limit !== undefined ? `; the first ${examples.length} (--limit ${limit})` : "";
      const fewer = examples.length < splitSize && limit === undefined
        ? `; the data has ${examples.length}`
        : "";
      const splitSource = `${source}${fewer}${cut}`;
      console.error(`${task}: evaluating ${examples.length} test examples (${splitSource})`);
      const t0 = performance.now();
      const metrics = await evaluateStage(stage, task, examples, tok, { batch });
      const report: EvalReport = {
        task,
        model: modelDir,
        run: opts.run ?? null,
        steps,
        split: "test",
        examples: examples.length,
        split_source: splitSource,
        ...metrics,
      };
      console.error(`evaluated in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      if (opts.json) {
        console.log(JSON.stringify(report));
        return;
      }
      const pct = (v: number) => `${(v * 100).toFixed(2)}%`;
      const what = opts.run ? `${opts.run} (${steps} steps)` : modelDir;
      const figures = report.f1 !== undefined
        ? `F1 ${pct(report.f1)}, EM ${pct(report.em!)}`
        : `accuracy ${pct(report.accuracy!)}`;
      console.log(
        `${task} test, ${examples.length} examples (${splitSource}), ${what}: ${figures}`,
      );
    });
}
