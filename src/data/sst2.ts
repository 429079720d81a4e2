/**
 * SST-2 in the GLUE TSV layout (`sentence<TAB>label`, header line, no quoting: split on the last
 * tab), and MeZO-style splits: train and validation drawn disjointly with a seed from the
 * labelled training files, test from the test pool.
 *
 * `../shared/data/sst2` holds `train.tsv` + `dev.tsv` (together GLUE train) and `test.tsv`
 * (GLUE dev, labelled). A single TSV file works too: then all three splits are drawn from it.
 */
import { insecureRandom } from "../dpzo/randomness.ts";
import { drawSplits, fileKind, readRecords, type Row, splitFiles, str } from "./records.ts";

export interface Sst2Example {
  sentence: string;
  label: 0 | 1;
}

export interface Splits<T> {
  train: T[];
  val: T[];
  test: T[];
}

/** Parses a GLUE SST-2 TSV file; errors name the file and line. */
export async function readSst2Tsv(path: string): Promise<Sst2Example[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new Error(`${path}: not found`);
    throw e;
  }
  const lines = text.split("\n");
  const header = lines[0].trim().split("\t");
  if (header[0] !== "sentence" || header[header.length - 1] !== "label") {
    throw new Error(`${path}:1: expected the header "sentence<TAB>label" (GLUE SST-2 layout)`);
  }
  const out: Sst2Example[] = [];
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i].replace(/\r$/, "");
    if (line === "") continue;
    const tab = line.lastIndexOf("\t");
    const label = line.slice(tab + 1).trim();
    if (tab < 0 || (label !== "0" && label !== "1")) {
      throw new Error(`${path}:${i + 1}: expected "sentence<TAB>0|1"`);
    }
    out.push({ sentence: line.slice(0, tab), label: label === "1" ? 1 : 0 });
  }
  return out;
}

/** A seeded Fisher-Yates shuffle (the split is public: it does not use the secret generator). */
export function seededShuffle<T>(items: T[], seed: number): T[] {
  const rng = insecureRandom(seed);
  const a = [...items];
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(rng.uniform() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

export interface SplitSizes {
  train: number;
  val: number;
  test: number;
  seed: number;
}

/** One SST-2 record of a JSONL or parquet file (`sentence`, `label` 0/1 as glue/sst2 has it). */
function recordExample(row: Row, where: string): Sst2Example {
  const l = row.label;
  const label = l === 1 || l === 1n || l === "1"
    ? 1
    : l === 0 || l === 0n || l === "0"
    ? 0
    : undefined;
  if (label === undefined) throw new Error(`${where}: field "label" must be 0 or 1`);
  return { sentence: str(row, "sentence", where), label };
}

/** One SST-2 file of any layout: GLUE TSV, JSONL or parquet. */
async function readSst2File(path: string): Promise<Sst2Example[]> {
  if (fileKind(path) === "tsv") return await readSst2Tsv(path);
  const rows = await readRecords(path);
  return rows.map((r, i) => recordExample(r, `${path}: record ${i + 1}`));
}

/**
 * Loads SST-2 from a directory in the GLUE TSV layout (train.tsv, dev.tsv, test.tsv), one TSV
 * file, or JSONL / Hugging Face parquet files (`train*` for train and validation, the
 * `validation*` file as the test pool, as glue/sst2 on the Hub lays them out).
 */
export async function loadSst2(path: string, sizes: SplitSizes): Promise<Splits<Sst2Example>> {
  const stat = await Deno.stat(path).catch(() => {
    throw new Error(`task.data: ${path} not found; point it at a GLUE SST-2 directory or TSV file`);
  });
  const tsvLayout = stat.isDirectory
    ? await Deno.stat(`${path}/train.tsv`).then(() => true, () => false)
    : fileKind(path) === "tsv";
  if (!tsvLayout) {
    const files = await splitFiles(path, "SST-2");
    const pool = (await Promise.all(files.pool.map(readSst2File))).flat();
    const test = files.testPool
      ? (await Promise.all(files.testPool.map(readSst2File))).flat()
      : undefined;
    return drawSplits(pool, test, sizes, path);
  }
  let pool: Sst2Example[], testPool: Sst2Example[] | undefined;
  if (stat.isDirectory) {
    pool = [...await readSst2Tsv(`${path}/train.tsv`)];
    try {
      pool.push(...await readSst2Tsv(`${path}/dev.tsv`));
    } catch { /* dev.tsv is optional */ }
    testPool = await readSst2Tsv(`${path}/test.tsv`).catch(() => undefined);
  } else {
    pool = await readSst2Tsv(path);
  }
  const shuffled = seededShuffle(pool, sizes.seed);
  const need = sizes.train + sizes.val + (testPool ? 0 : sizes.test);
  if (shuffled.length < need) {
    throw new Error(`task.data: ${path} has ${shuffled.length} examples; the splits need ${need}`);
  }
  const train = shuffled.slice(0, sizes.train);
  const val = shuffled.slice(sizes.train, sizes.train + sizes.val);
  const test = testPool
    ? seededShuffle(testPool, sizes.seed).slice(0, sizes.test)
    : shuffled.slice(sizes.train + sizes.val, need);
  return { train, val, test };
}
