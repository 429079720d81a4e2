/**
 * DROP: the flattened JSONL(.gz) layout of `../shared/data/drop` (OpenAI simple-evals:
 * `context` = "Passage: …\nQuestion: …\nAnswer:", `completion` = " <answer>", `ref_text` = the
 * accepted answers joined with `|`), or Hugging Face `ucinlp/drop` rows (JSONL / parquet) with
 * `passage`, `question` and `answers_spans.spans`. The first answer is the training target;
 * all of them are gold answers for F1/EM.
 *
 * Only one labelled split exists here: train, validation and test are drawn disjointly from the
 * file(s) with a seed, whole passages per split (no passage in two splits).
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

export interface DropExample {
  passage: string;
  question: string;
  answers: string[];
}

function fromRow(row: Row, where: string): DropExample {
  if (typeof row.context === "string") {
    const c = row.context;
    const q = c.lastIndexOf("\nQuestion: ");
    if (!c.startsWith("Passage: ") || q < 0 || !c.endsWith("\nAnswer:")) {
      throw new Error(`${where}: "context" must read "Passage: …\\nQuestion: …\\nAnswer:"`);
    }
    const first = str(row, "completion", where).trim();
    const refs = typeof row.ref_text === "string" ? row.ref_text.split("|") : [];
    const answers = [...new Set([first, ...refs.map((r) => r.trim())])].filter((a) => a !== "");
    return {
      passage: c.slice("Passage: ".length, q),
      question: c.slice(q + "\nQuestion: ".length, c.length - "\nAnswer:".length),
      answers: answers.length ? answers : [first],
    };
  }
  const spans = (row.answers_spans as { spans?: unknown } | undefined)?.spans;
  if (!Array.isArray(spans) || spans.length === 0 || spans.some((s) => typeof s !== "string")) {
    throw new Error(`${where}: needs "context"/"completion" or "answers_spans.spans"`);
  }
  return {
    passage: str(row, "passage", where),
    question: str(row, "question", where),
    answers: [...new Set(spans as string[])],
  };
}

export async function readDrop(path: string): Promise<DropExample[]> {
  return (await readRecords(path)).map((r, i) => fromRow(r, `${path}: record ${i + 1}`));
}

export async function loadDrop(path: string, sizes: SplitSizes): Promise<Splits<DropExample>> {
  const { pool, testPool } = await splitFiles(path, "DROP", ["jsonl", "json", "parquet"]);
  const train = (await Promise.all(pool.map(readDrop))).flat();
  const test = testPool ? (await Promise.all(testPool.map(readDrop))).flat() : undefined;
  return drawSplits(train, test, sizes, path, (e) => e.passage);
}
