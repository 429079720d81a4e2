/**
 * Snapshots: the trainable tensors of one pipeline stage after step t, so that a replacement
 * worker (or `export`) replays only the ledger after t instead of the whole run. Optional
 * (`train.snapshot_every`); the ledger stays the source of truth — a snapshot is a cache of
 * "base + ledger up to t".
 *
 *   RUN_DIR/snapshots/step-<t>/stage-<k>.safetensors   float32 tensors (flat), written to a
 *                                                       temporary file, synced, renamed
 *   RUN_DIR/snapshots/step-<t>/stage-<k>.json          {format, step, stage, bytes, sha256}
 *                                                       written last: a snapshot without it
 *                                                       does not exist
 *
 * Reading checks the size and the SHA-256 against the JSON: a truncated or corrupted snapshot is
 * reported with its file name and what is wrong, and nothing is overwritten.
 */
import { createHash } from "node:crypto";
import { z } from "zod";
import { readSafetensorsHeader, readTensor, writeSafetensors } from "../model/safetensors.ts";

export const SNAPSHOT_FORMAT = "dpzo-snapshot/1";

const SnapshotMeta = z.object({
  format: z.literal(SNAPSHOT_FORMAT),
  step: z.number().int().positive(),
  stage: z.number().int().nonnegative(),
  bytes: z.number().int().nonnegative(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
});

export function snapshotPaths(runDir: string, step: number, stage: number) {
  const dir = `${runDir}/snapshots/step-${String(step).padStart(8, "0")}`;
  return { dir, file: `${dir}/stage-${stage}.safetensors`, meta: `${dir}/stage-${stage}.json` };
}

async function sha256File(path: string): Promise<{ sha256: string; bytes: number }> {
  const h = createHash("sha256");
  let bytes = 0;
  const f = await Deno.open(path);
  for await (const chunk of f.readable) {
    h.update(chunk);
    bytes += chunk.byteLength;
  }
  return { sha256: h.digest("hex"), bytes };
}

/** Writes the snapshot of `stage` after `step` (tensors as they are now). */
export async function writeSnapshot(
  runDir: string,
  step: number,
  stage: number,
  tensors: { name: string; data: Float32Array }[],
): Promise<void> {
  const p = snapshotPaths(runDir, step, stage);
  await Deno.mkdir(p.dir, { recursive: true });
  await writeSafetensors(
    p.file,
    tensors.map((t) => ({ name: t.name, shape: [t.data.length], data: t.data })),
    { format: "dpzo-snapshot", step: String(step), stage: String(stage) },
  );
  const { sha256, bytes } = await sha256File(p.file);
  const tmp = `${p.meta}.tmp-${Deno.pid}`;
  await Deno.writeTextFile(
    tmp,
    JSON.stringify({ format: SNAPSHOT_FORMAT, step, stage, bytes, sha256 }) + "\n",
  );
  await Deno.rename(tmp, p.meta);
}

/** Steps that have a snapshot of `stage` (complete: its JSON exists), newest first. */
export async function snapshotSteps(runDir: string, stage: number): Promise<number[]> {
  const out: number[] = [];
  try {
    for await (const e of Deno.readDir(`${runDir}/snapshots`)) {
      const m = /^step-(\d+)$/.exec(e.name);
      if (!m) continue;
      try {
        await Deno.stat(snapshotPaths(runDir, Number(m[1]), stage).meta);
        out.push(Number(m[1]));
      } catch { /* not for this stage */ }
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return out.sort((a, b) => b - a);
}

/** Reads and verifies a snapshot: name -> data. Errors name the file and the problem. */
export async function readSnapshot(
  runDir: string,
  step: number,
  stage: number,
): Promise<Map<string, Float32Array>> {
  const p = snapshotPaths(runDir, step, stage);
  let meta;
  try {
    meta = SnapshotMeta.parse(JSON.parse(await Deno.readTextFile(p.meta)));
  } catch (e) {
    throw new Error(`${p.meta}: not a valid snapshot description (${(e as Error).message})`);
  }
  let actual;
  try {
    actual = await sha256File(p.file);
  } catch (e) {
    throw new Error(`${p.file}: cannot read the snapshot (${(e as Error).message})`);
  }
  if (actual.bytes !== meta.bytes) {
    throw new Error(
      `${p.file}: truncated or corrupt snapshot: ${actual.bytes} bytes where ${p.meta} records ` +
        `${meta.bytes}; remove step-${step} to replay from an older snapshot or the base`,
    );
  }
  if (actual.sha256 !== meta.sha256) {
    throw new Error(
      `${p.file}: corrupt snapshot: SHA-256 differs from ${p.meta}; remove step-${step} to ` +
        `replay from an older snapshot or the base`,
    );
  }
  const header = await readSafetensorsHeader(p.file);
  const out = new Map<string, Float32Array>();
  for (const [name, entry] of header.tensors) out.set(name, await readTensor(p.file, entry));
  return out;
}
