/**
 * QNLI (GLUE): does `sentence` contain the answer to `question`? Layouts: the GLUE TSV
 * (`index<TAB>question<TAB>sentence<TAB>label`, label `entailment` / `not_entailment`, no
 * quoting), or JSONL / Hugging Face parquet rows with `question`, `sentence` and `label`
 * (`0` = entailment, `1` = not_entailment, as the `glue/qnli` dataset; or the label strings).
 *
 * `task.data` may be a directory with `train.*` and `dev.*` (or `validation.*`) files —
 * train and validation are drawn from train, test from dev — or with only a dev file, or one
 * file: then all three splits are drawn disjointly from it (`../shared/data/qnli` holds only
 * GLUE dev, 5,463 rows).
 */
import {
  drawSplits,
  readRecords,
  type Row,
  splitFiles,
  type Splits,
  type SplitSizes,
  str,
} from "./records.ts";

export interface QnliExample {
  question: string;
  sentence: string;
  /** 0 = entailment (the sentence answers the question), 1 = not_entailment. */
  label: 0 | 1;
}

function toExample(row: Row, where: string): QnliExample {
  const l = row.label;
  const label = l === "entailment" || l === 0 || l === 0n || l === "0"
    ? 0
    : l === "not_entailment" || l === 1 || l === 1n || l === "1"
    ? 1
    : undefined;
  if (label === undefined) {
    throw new Error(`${where}: field "label" must be entailment / not_entailment (or 0 / 1)`);
  }
  return { question: str(row, "question", where), sentence: str(row, "sentence", where), label };
}

export async function readQnli(path: string): Promise<QnliExample[]> {
  const rows = await readRecords(path, 4);
  return rows.map((r, i) => toExample(r, `${path}: record ${i + 1}`));
}

export async function loadQnli(path: string, sizes: SplitSizes): Promise<Splits<QnliExample>> {
  const { pool, testPool } = await splitFiles(path, "QNLI");
  const train = (await Promise.all(pool.map(readQnli))).flat();
  const test = testPool ? (await Promise.all(testPool.map(readQnli))).flat() : undefined;
  return drawSplits(train, test, sizes, path);
}
