/**
 * Reading example records from the layouts users point dpzo at, and MeZO-style splits.
 *
 * - `.tsv` (GLUE): a header line, tab-separated, no quoting (a row is split on tabs);
 * - `.jsonl` / `.jsonl.gz`: one JSON object per line (gzip by the `.gz` suffix);
 * - `.json`: a JSON array of objects (SQuAD's own layout has its own reader);
 * - `.parquet`: Hugging Face datasets' parquet exports, read with hyparquet (snappy or
 *   uncompressed pages; nested columns such as SQuAD's `answers` come back as objects).
 *
 * Errors name the file (and line where there is one).
 */
import { parquetReadObjects } from "hyparquet";
import { seededShuffle } from "./sst2.ts";

export type Row = Record<string, unknown>;

export type FileKind = "tsv" | "jsonl" | "json" | "parquet";

/** How each kind of file is named, for messages. */
const KIND_NAMES: Record<FileKind, string> = {
  tsv: ".tsv",
  jsonl: ".jsonl(.gz)",
  json: ".json",
  parquet: ".parquet",
};

/** ".tsv, .jsonl(.gz) or .parquet". */
export function kindList(kinds: readonly FileKind[]): string {
  const names = kinds.map((k) => KIND_NAMES[k]);
  return names.length > 1 ? `${names.slice(0, -1).join(", ")} or ${names.at(-1)}` : names[0];
}

export const ALL_KINDS: readonly FileKind[] = ["tsv", "jsonl", "json", "parquet"];

export function fileKind(path: string): FileKind | undefined {
  const p = path.toLowerCase();
  if (p.endsWith(".tsv")) return "tsv";
  if (p.endsWith(".jsonl") || p.endsWith(".jsonl.gz") || p.endsWith(".ndjson")) return "jsonl";
  if (p.endsWith(".json") || p.endsWith(".json.gz")) return "json";
  if (p.endsWith(".parquet")) return "parquet";
  return undefined;
}

async function readBytes(path: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new Error(`${path}: not found`);
    throw e;
  }
}

/** A file's text, gunzipped when its name ends in `.gz`. */
export async function readText(path: string): Promise<string> {
  const bytes = await readBytes(path);
  if (!path.endsWith(".gz")) return new TextDecoder().decode(bytes);
  const stream = new Blob([bytes as BlobPart]).stream().pipeThrough(
    new DecompressionStream("gzip"),
  );
  try {
    return await new Response(stream).text();
  } catch {
    throw new Error(`${path}: not a valid gzip file`);
  }
}

export function parseJsonl(text: string, path: string): Row[] {
  const out: Row[] = [];
  text.split("\n").forEach((line, i) => {
    if (line.trim() === "") return;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch {
      throw new Error(`${path}:${i + 1}: not valid JSON`);
    }
    if (typeof v !== "object" || v === null || Array.isArray(v)) {
      throw new Error(`${path}:${i + 1}: expected a JSON object per line`);
    }
    out.push(v as Row);
  });
  return out;
}

/** GLUE TSV: header names the columns; rows split on tabs (no quoting). */
export function parseTsv(text: string, path: string, columns: number): Row[] {
  const lines = text.split("\n");
  const header = lines[0].replace(/\r$/, "").split("\t");
  if (header.length !== columns) {
    throw new Error(`${path}:1: expected a header of ${columns} tab-separated columns`);
  }
  const out: Row[] = [];
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i].replace(/\r$/, "");
    if (line === "") continue;
    const cells = line.split("\t");
    if (cells.length !== columns) {
      throw new Error(`${path}:${i + 1}: expected ${columns} tab-separated columns`);
    }
    out.push(Object.fromEntries(header.map((h, j) => [h, cells[j]])));
  }
  return out;
}

export async function readParquet(path: string): Promise<Row[]> {
  const bytes = await readBytes(path);
  const file = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  try {
    return await parquetReadObjects({ file: file as ArrayBuffer }) as Row[];
  } catch (e) {
    throw new Error(`${path}: cannot read as parquet (${(e as Error).message})`);
  }
}

/** Records of a JSONL(.gz), JSON array, parquet or TSV file (`tsvColumns` for TSV). */
export async function readRecords(path: string, tsvColumns?: number): Promise<Row[]> {
  const kind = fileKind(path);
  if (kind === "parquet") return await readParquet(path);
  if (kind === "jsonl") return parseJsonl(await readText(path), path);
  if (kind === "json") {
    const v = JSON.parse(await readText(path));
    if (!Array.isArray(v)) throw new Error(`${path}: expected a JSON array of objects`);
    return v as Row[];
  }
  if (kind === "tsv" && tsvColumns) return parseTsv(await readText(path), path, tsvColumns);
  if (kind === "tsv") {
    throw new Error(
      `${path}: .tsv is read for the GLUE tasks only; give ${kindList(ALL_KINDS.slice(1))}`,
    );
  }
  throw new Error(`${path}: unknown layout (by its name); give ${kindList(ALL_KINDS)}`);
}

/** A string field of a record, or an error that names file, record and field. */
export function str(row: Row, field: string, where: string): string {
  const v = row[field];
  if (typeof v !== "string") throw new Error(`${where}: field "${field}" must be a string`);
  return v;
}

/**
 * The pool files and (optionally) the test-pool files of `task.data`, detected from the files
 * present: a file is the pool; in a directory, the files of the `kinds` the task reads, where
 * those named `train*` are the pool and the others the test pool, or without one, a single file
 * is the pool (all three splits drawn from it) and of several the last (by name) is the test
 * pool. Files named `test*` are skipped (GLUE's have no labels). When nothing fits, the error
 * lists what was found and what was expected.
 */
export async function splitFiles(
  path: string,
  what: string,
  kinds: readonly FileKind[] = ALL_KINDS,
): Promise<{ pool: string[]; testPool?: string[] }> {
  const stat = await Deno.stat(path).catch(() => {
    throw new Error(`task.data: ${path} not found; point it at a ${what} file or directory`);
  });
  const expected = `${what} data: ${kindList(kinds)} files (train* gives train and ` +
    `validation, another file the test split; or one file for all three)`;
  if (!stat.isDirectory) {
    const kind = fileKind(path);
    if (!kind || !kinds.includes(kind)) {
      throw new Error(
        `task.data: ${path} is not a layout dpzo reads for ${what}; expected ${expected}`,
      );
    }
    return { pool: [path] };
  }
  const files: string[] = [], found: string[] = [], skipped: string[] = [];
  for await (const e of Deno.readDir(path)) {
    if (!e.isFile) continue;
    found.push(e.name);
    const kind = fileKind(e.name);
    if (!kind || !kinds.includes(kind)) continue;
    if (e.name.startsWith("test")) skipped.push(e.name);
    else files.push(e.name);
  }
  files.sort();
  if (files.length === 0) {
    const seen = found.length ? `found ${found.sort().join(", ")}` : "it is empty";
    const why = skipped.length
      ? ` (${skipped.sort().join(", ")}: test* files are skipped, GLUE's have no labels; ` +
        `rename a labelled one)`
      : "";
    throw new Error(
      `task.data: ${path} holds no ${what} data file: ${seen}${why}; expected ${expected}`,
    );
  }
  const full = (names: string[]) => names.map((f) => `${path}/${f}`);
  const train = files.filter((f) => f.includes("train"));
  if (train.length) {
    const rest = files.filter((f) => !f.includes("train"));
    return { pool: full(train), testPool: rest.length ? full(rest) : undefined };
  }
  if (files.length === 1) return { pool: full(files) };
  return { pool: full(files.slice(0, -1)), testPool: full(files.slice(-1)) };
}

export interface SplitSizes {
  train: number;
  val: number;
  test: number;
  seed: number;
}

export interface Splits<T> {
  train: T[];
  val: T[];
  test: T[];
}

/**
 * Draws `n` examples, seeded, taking whole groups (examples sharing a passage) so that no group
 * straddles two draws: groups are shuffled and taken until `n` examples are reached; the last
 * group's surplus is dropped. Returns the draw and the groups left over.
 */
function drawGroups<T>(groups: T[][], n: number): { drawn: T[]; rest: T[][] } {
  const drawn: T[] = [];
  let g = 0;
  while (drawn.length < n && g < groups.length) drawn.push(...groups[g++]);
  return { drawn: drawn.slice(0, n), rest: groups.slice(g) };
}

function groupBy<T>(items: T[], key: (t: T) => string): T[][] {
  const m = new Map<string, T[]>();
  for (const it of items) {
    const k = key(it);
    const g = m.get(k);
    if (g) g.push(it);
    else m.set(k, [it]);
  }
  return [...m.values()];
}

/**
 * MeZO-style splits (train / validation / test, seeded, disjoint). With a separate test pool the
 * test draw comes from it and train + validation from `pool`; otherwise all three come from
 * `pool`. With `group`, examples that share a group (a passage) never land in two splits. A
 * pool too small for the sizes is an error that names `what`.
 */
export function drawSplits<T>(
  pool: T[],
  testPool: T[] | undefined,
  sizes: SplitSizes,
  what: string,
  group?: (t: T) => string,
): Splits<T> {
  const groupsOf = (items: T[], salt: number) =>
    seededShuffle(group ? groupBy(items, group) : items.map((t) => [t]), sizes.seed + salt);
  const need = sizes.train + sizes.val + (testPool ? 0 : sizes.test);
  if (pool.length < need) {
    throw new Error(`task.data: ${what} has ${pool.length} examples; the splits need ${need}`);
  }
  let groups = groupsOf(pool, 0);
  let test: T[];
  if (testPool) {
    if (testPool.length < sizes.test) {
      throw new Error(
        `task.data: the test pool of ${what} has ${testPool.length} examples; ` +
          `task.test_examples is ${sizes.test}`,
      );
    }
    test = drawGroups(groupsOf(testPool, 1), sizes.test).drawn;
  } else {
    const d = drawGroups(groups, sizes.test);
    test = d.drawn;
    groups = d.rest;
  }
  const v = drawGroups(groups, sizes.val);
  const t = drawGroups(v.rest, sizes.train);
  if (test.length < sizes.test || v.drawn.length < sizes.val || t.drawn.length < sizes.train) {
    throw new Error(
      `task.data: ${what} has too few examples (or passages) for disjoint splits of ` +
        `${sizes.train} / ${sizes.val} / ${sizes.test}; lower task.*_examples`,
    );
  }
  // Shuffle within each draw so that a draw is not ordered by passage.
  return {
    train: seededShuffle(t.drawn, sizes.seed + 2),
    val: seededShuffle(v.drawn, sizes.seed + 3),
    test: seededShuffle(test, sizes.seed + 4),
  };
}
