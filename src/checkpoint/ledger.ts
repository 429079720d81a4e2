/**
 * The ledger: the source of truth of a run (DESIGN.md, invariant 3). Base checkpoint + ledger
 * = the fine-tuned model. One JSON line per released step, appended and flushed to disk
 * (fsync) BEFORE the update is broadcast, so a released step is never lost; a step that was
 * not logged was never released.
 *
 * Each line carries `check`, the first 16 hex digits of the SHA-256 of the line's JSON without
 * that field, so a corrupt or hand-edited line is reported with its file and line number.
 *
 * A line holds only what the step released and its public settings (README, "What is
 * released"): the step, its public seed, the released noisy sum in grid units `sum_units` and
 * ghat (a fixed function of it), the update coefficient, and q, the noise, the clip and the grid.
 * No wall-clock time: the time between appends depends on the batch size (format 2; older
 * ledgers with a `time` field still replay, see isLegacyEntry).
 *
 * A step of K > 1 directions (DP-AggZO, `train.directions`) also carries `extra_directions`:
 * the K - 1 directions evaluated before the top-level one, each with its public seed, its
 * released coordinate of the noisy sum and its update coefficient `-(lr * ghat)`. The top-level
 * seed, ghat, sum_units and update_coeff are the step's last direction, whose restore is fused
 * with the update exactly as in a one-direction step; so a K = 1 line is unchanged.
 */
import { createHash } from "node:crypto";
import { z } from "zod";
import { formatZodError } from "../validation.ts";
import type { LedgerStepPrivacy } from "../privacy/mechanisms.ts";

export const LedgerEntrySchema = z.object({
  step: z.number().int().positive(),
  /** Public 64-bit step seed, as a decimal string (exact). */
  seed: z.string().regex(/^\d+$/),
  phi: z.number().positive(),
  ghat: z.number(),
  lr: z.number().nonnegative(),
  /** The coefficient of the fused restore + update pass: phi - lr * ghat, as applied. */
  update_coeff: z.number(),
  weight_decay: z.number().nonnegative(),
  q: z.number().gt(0).lte(1),
  mechanism: z.enum(["gaussian", "laplace", "none"]),
  sigma: z.number().positive().optional(),
  b: z.number().positive().optional(),
  /** Private steps: the clip C, the grid C / grid_units, and the released noisy sum in units. */
  clip: z.number().positive().optional(),
  grid_units: z.number().int().positive().optional(),
  sum_units: z.number().int().optional(),
  /** q n, the divisor of ghat = sum_units * (clip / grid_units) / expected_batch. */
  expected_batch: z.number().positive().optional(),
  /** What one neighbour adds or removes: one training example, or one passage (context). */
  unit: z.enum(["example", "context"]).optional(),
  /**
   * Only in ledgers written before format 2 (floating-point noise, and this wall-clock time of
   * the append, which told empty batches from full ones): read, for replay; never written.
   */
  time: z.string().optional(),
  /** Steps of K > 1 directions: the K - 1 directions before the top-level one, in order. */
  extra_directions: z.array(
    z.object({
      seed: z.string().regex(/^\d+$/),
      ghat: z.number(),
      sum_units: z.number().int().optional(),
      /** -(lr * ghat): this direction's update pass (its restore was a pass of its own). */
      update_coeff: z.number(),
    }).strict(),
  ).min(1).optional(),
}).strict().superRefine((e, ctx) => {
  const issue = (path: string, message: string) =>
    ctx.addIssue({ code: "custom", path: [path], message });
  if (e.update_coeff !== e.phi - e.lr * e.ghat) {
    issue("update_coeff", "is not phi - lr * ghat: the line was altered");
  }
  for (const [i, d] of (e.extra_directions ?? []).entries()) {
    if (d.update_coeff !== extraUpdateCoeff(e.lr, d.ghat)) {
      issue("extra_directions", `${i}: update_coeff is not -(lr * ghat): the line was altered`);
    }
    if (e.mechanism !== "none" && e.grid_units !== undefined) {
      const { clip, grid_units, expected_batch } = e;
      if (
        d.sum_units === undefined || clip === undefined || expected_batch === undefined ||
        d.ghat !== (d.sum_units * (clip / grid_units)) / expected_batch
      ) {
        issue(
          "extra_directions",
          `${i}: ghat is not sum_units * (clip / grid_units) / ` +
            `expected_batch: the line was altered`,
        );
      }
    }
  }
  // A private step without a grid is from a ledger before format 2 (isLegacyEntry).
  if (e.mechanism === "none" || e.grid_units === undefined) return;
  const { clip, grid_units, sum_units, expected_batch } = e;
  if (clip === undefined || sum_units === undefined || expected_batch === undefined) {
    issue("grid_units", "a private step needs clip, grid_units, sum_units and expected_batch");
  } else if (e.ghat !== (sum_units * (clip / grid_units)) / expected_batch) {
    // The same expression as releasedGhat (src/dpzo/mechanism.ts): ghat carries nothing else.
    issue("ghat", "is not sum_units * (clip / grid_units) / expected_batch: the line was altered");
  }
});

/**
 * What the accountant needs of a released step (null for a non-private one): its q and noise,
 * and for format 2 the grid of its discrete noise (src/privacy/discrete.ts).
 */
export function entryPrivacy(e: LedgerEntry): LedgerStepPrivacy | null {
  if (e.mechanism === "none") return null;
  const step: LedgerStepPrivacy = e.mechanism === "gaussian"
    ? { mechanism: "gaussian", q: e.q, sigma: e.sigma }
    : { mechanism: "laplace", q: e.q, b: e.b };
  if (e.grid_units !== undefined) step.gridUnits = e.grid_units;
  return step;
}

/**
 * True for a line written before ledger format 2: a wall-clock time, or a private step with
 * floating-point noise (no grid).
 */
export function isLegacyEntry(e: LedgerEntry): boolean {
  return e.time !== undefined || (e.mechanism !== "none" && e.grid_units === undefined);
}

export type LedgerEntry = z.infer<typeof LedgerEntrySchema>;

function checksum(json: string): string {
  return createHash("sha256").update(json).digest("hex").slice(0, 16);
}

/** One ledger line with its checksum. */
export function encodeLedgerLine(entry: LedgerEntry): string {
  const body = JSON.stringify(entry);
  return `${body.slice(0, -1)},"check":"${checksum(body)}"}\n`;
}

/**
 * Where the coordinator appends released steps: `append` resolves only once the entry is durable
 * (on disk, or acknowledged by the JetStream stream), and only then is the step released.
 */
export interface LedgerSink {
  append(entry: LedgerEntry): Promise<void>;
  close(): void;
}

/** An append-only ledger file; every append is on disk when it returns. */
export class LedgerWriter implements LedgerSink {
  #file: Deno.FsFile;
  private constructor(file: Deno.FsFile) {
    this.#file = file;
  }
  static async open(path: string): Promise<LedgerWriter> {
    return new LedgerWriter(await Deno.open(path, { append: true, create: true }));
  }
  async append(entry: LedgerEntry): Promise<void> {
    const bytes = new TextEncoder().encode(encodeLedgerLine(entry));
    let off = 0;
    while (off < bytes.length) off += await this.#file.write(bytes.subarray(off));
    await this.#file.sync();
  }
  #closed = false;
  /** Closes the file (once; later calls do nothing). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#file.close();
  }
}

/**
 * Parses and verifies one ledger line (schema and checksum); `where` names the file and line
 * (or the stream and sequence) in the error.
 */
export function parseLedgerLine(line: string, where: string, partial = false): LedgerEntry {
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(line);
  } catch {
    throw new Error(
      `${where}: corrupt ledger line (not JSON${
        partial ? "; the file ends in a partial line" : ""
      })`,
    );
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new Error(`${where}: corrupt ledger line (not a JSON object)`);
  }
  const { check, ...rest } = raw;
  if (check !== checksum(JSON.stringify(rest))) {
    throw new Error(`${where}: checksum mismatch: the ledger line was altered or corrupted`);
  }
  const parsed = LedgerEntrySchema.safeParse(rest);
  if (!parsed.success) throw new Error(`${where}: ${formatZodError(parsed.error)}`);
  return parsed.data;
}

/** Reads and verifies a ledger; errors name the file, the line and the problem. */
export async function readLedger(path: string): Promise<LedgerEntry[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new Error(`${path}: ledger not found`);
    throw e;
  }
  const entries: LedgerEntry[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (line === "") continue;
    const where = `${path}:${i + 1}`;
    const entry = parseLedgerLine(line, where, i === lines.length - 1);
    const expected = (entries.at(-1)?.step ?? 0) + 1;
    if (entry.step !== expected) {
      throw new Error(`${where}: step ${entry.step} where step ${expected} was expected`);
    }
    entries.push(entry);
  }
  return entries;
}

/** The update coefficient of a direction other than a step's last: -(lr * ghat). */
export function extraUpdateCoeff(lr: number, ghat: number): number {
  return -(lr * ghat);
}

/** Number of directions of a step (DP-AggZO's K; 1 for DP-ZO). */
export function entryDirections(e: LedgerEntry): number {
  return 1 + (e.extra_directions?.length ?? 0);
}

/** One in-place pass of a step: theta += coeff z(seed); `update` marks the committing passes. */
export interface StepPass {
  seed: bigint;
  coeff: number;
  /** MeZO weight decay in this pass (only the step's first update pass). */
  decay: boolean;
  /** An update pass (restore + update, or a further direction's update), not a perturbation. */
  update: boolean;
}

/**
 * The in-place passes of a released step, in order. One direction: +phi, -2 phi, then the fused
 * restore and update. K directions: for each extra direction +phi, -2 phi, +phi (restored before
 * the next is perturbed, so one perturbation is in force at a time and memory stays flat); then
 * the last direction's +phi, -2 phi and fused restore + update (with the decay); then the extra
 * directions' updates, in order. Live workers and replay both apply exactly these coefficients.
 */
export function stepPasses(e: LedgerEntry): StepPass[] {
  const extra = e.extra_directions ?? [];
  const out: StepPass[] = [];
  const perturbation = (seed: bigint, coeff: number) =>
    out.push({ seed, coeff, decay: false, update: false });
  for (const d of extra) {
    const s = BigInt(d.seed);
    perturbation(s, e.phi);
    perturbation(s, -2 * e.phi);
    perturbation(s, e.phi);
  }
  const seed = BigInt(e.seed);
  perturbation(seed, e.phi);
  perturbation(seed, -2 * e.phi);
  out.push({ seed, coeff: e.update_coeff, decay: e.weight_decay > 0, update: true });
  for (const d of extra) {
    out.push({ seed: BigInt(d.seed), coeff: d.update_coeff, decay: false, update: true });
  }
  return out;
}
