/**
 * SQuAD v1.1: the official JSON layout
 * (`{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", "answers":
 * [{"text", "answer_start"}]}]}]}]}`), or JSONL / Hugging Face parquet rows with `title`,
 * `context`, `question` and `answers` (`{"text": [...], "answer_start": [...]}`, as the
 * `squad` dataset). Every gold answer is kept (F1/EM take the best); the first is the
 * training target.
 *
 * Splits (MeZO: 1000 / 500 / 1000, seeded, disjoint, whole passages per split). `task.data` is a
 * file (all three splits drawn from it) or a directory: files whose name contains `train` give
 * train + validation and the others test; without a train file, the last file (by name) is the
 * test pool and the others give train + validation. `../shared/data/squad` holds the dev set in
 * two parts split by article: part1 -> train + validation, part2 -> test, no shared article.
 */
import {
  drawSplits,
  fileKind,
  readRecords,
  readText,
  type Row,
  splitFiles,
  type Splits,
  type SplitSizes,
  str,
} from "./records.ts";

export interface SquadExample {
  id: string;
  title: string;
  context: string;
  question: string;
  answers: string[];
}

function answersOf(v: unknown, where: string): string[] {
  // Official: [{text, answer_start}]; Hugging Face: {text: [...], answer_start: [...]}.
  let texts: unknown[] | undefined;
  if (Array.isArray(v)) texts = v.map((a) => (typeof a === "string" ? a : a?.text));
  else if (v && typeof v === "object" && Array.isArray((v as { text?: unknown }).text)) {
    texts = (v as { text: unknown[] }).text;
  }
  if (!texts || texts.length === 0 || texts.some((t) => typeof t !== "string")) {
    throw new Error(`${where}: "answers" must hold at least one answer text`);
  }
  return texts as string[];
}

function fromRow(row: Row, where: string): SquadExample {
  return {
    id: typeof row.id === "string" ? row.id : where,
    title: typeof row.title === "string" ? row.title : "",
    context: str(row, "context", where),
    question: str(row, "question", where),
    answers: answersOf(row.answers, where),
  };
}

/** Reads one SQuAD file: the official JSON layout, or JSONL / parquet rows. */
export async function readSquad(path: string): Promise<SquadExample[]> {
  if (fileKind(path) !== "json") {
    return (await readRecords(path)).map((r, i) => fromRow(r, `${path}: record ${i + 1}`));
  }
  let doc: unknown;
  try {
    doc = JSON.parse(await readText(path));
  } catch {
    throw new Error(`${path}: not valid JSON`);
  }
  const data = (doc as { data?: unknown })?.data;
  if (!Array.isArray(data)) {
    throw new Error(`${path}: expected the SQuAD layout {"data": [{"title", "paragraphs"}]}`);
  }
  const out: SquadExample[] = [];
  data.forEach((article, a) => {
    const paragraphs = article?.paragraphs;
    if (!Array.isArray(paragraphs)) throw new Error(`${path}: data[${a}].paragraphs missing`);
    paragraphs.forEach((p, j) => {
      const where = `${path}: data[${a}].paragraphs[${j}]`;
      if (typeof p?.context !== "string" || !Array.isArray(p.qas)) {
        throw new Error(`${where}: needs "context" and "qas"`);
      }
      p.qas.forEach((qa: Row, k: number) =>
        out.push(fromRow({ ...qa, context: p.context, title: article.title }, `${where}.qas[${k}]`))
      );
    });
  });
  return out;
}

export async function loadSquad(path: string, sizes: SplitSizes): Promise<Splits<SquadExample>> {
  const { pool, testPool } = await splitFiles(path, "SQuAD", ["jsonl", "json", "parquet"]);
  const train = (await Promise.all(pool.map(readSquad))).flat();
  const test = testPool ? (await Promise.all(testPool.map(readSquad))).flat() : undefined;
  return drawSplits(train, test, sizes, path, (e) => e.context);
}
