/**
 * The task registry: for each task name, how its data loads (src/data), how an example becomes
 * a request (prompt + candidates, or prompt + target), whether it is a classification or a
 * generation task, and the metric it reports.
 *
 * | task  | kind           | metric                 | prompt                                  |
 * | ----- | -------------- | ---------------------- | --------------------------------------- |
 * | sst2  | classification | accuracy               | `{sentence} It was` + ` terrible`/` great` |
 * | qnli  | classification | accuracy               | see src/tasks/qnli.ts, ` Yes`/` No`     |
 * | squad | generation     | F1, EM (SQuAD v1.1)    | see src/tasks/squad.ts                  |
 * | drop  | generation     | F1, EM (SQuAD v1.1)    | see src/tasks/squad.ts                  |
 */
import type { Tokenizer } from "../tokenizer/mod.ts";
import { loadSst2 } from "../data/sst2.ts";
import { loadQnli } from "../data/qnli.ts";
import { loadSquad } from "../data/squad.ts";
import { loadDrop } from "../data/drop.ts";
import type { Splits, SplitSizes } from "../data/records.ts";
import { sst2Request } from "./sst2.ts";
import { qnliRequest } from "./qnli.ts";
import { dropRequest, squadRequest } from "./squad.ts";
import {
  candidateCrossEntropy,
  type ExampleRequest,
  targetCrossEntropy,
  type TaskName,
} from "./task.ts";

export type TaskKind = "classification" | "generation";

interface TaskDef<E> {
  kind: TaskKind;
  /** What `dpzo eval` prints and summary.json reports. */
  metric: "accuracy" | "f1";
  load(path: string, sizes: SplitSizes): Promise<Splits<E>>;
  request(ex: E, tok: Tokenizer, maxLength: number): ExampleRequest;
}

// deno-lint-ignore no-explicit-any
const TASKS: Record<TaskName, TaskDef<any>> = {
  sst2: { kind: "classification", metric: "accuracy", load: loadSst2, request: sst2Request },
  qnli: { kind: "classification", metric: "accuracy", load: loadQnli, request: qnliRequest },
  squad: { kind: "generation", metric: "f1", load: loadSquad, request: squadRequest },
  drop: { kind: "generation", metric: "f1", load: loadDrop, request: dropRequest },
};

export function taskKind(name: TaskName): TaskKind {
  return TASKS[name].kind;
}

export function taskMetric(name: TaskName): "accuracy" | "f1" {
  return TASKS[name].metric;
}

/** A task's training loss of one example from its scores. */
export function trainLossOf(
  name: TaskName,
): (scores: ArrayLike<number>, ex: ExampleRequest) => number {
  return TASKS[name].kind === "generation"
    ? (scores) => targetCrossEntropy(scores)
    : (scores, ex) => candidateCrossEntropy(scores, ex.label);
}

/** Loads a task's splits and turns every example into a request. */
export async function loadTaskSplits(
  name: TaskName,
  path: string,
  sizes: SplitSizes,
  tok: Tokenizer,
  maxLength: number,
): Promise<Splits<ExampleRequest>> {
  const def = TASKS[name];
  const splits = await def.load(path, sizes);
  // deno-lint-ignore no-explicit-any
  const req = (e: any) => def.request(e, tok, maxLength);
  return { train: splits.train.map(req), val: splits.val.map(req), test: splits.test.map(req) };
}
