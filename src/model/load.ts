/**
 * Filling a stage's weight store (src/model/weights.ts): from a checkpoint, streamed tensor by
 * tensor and converted to the stage's storage precision on the way, after checking that the
 * stage fits this machine (`ensureStageFits`); or from float32 arrays (tests, planning).
 */
import type { Checkpoint } from "./checkpoint.ts";
import type { OptConfig } from "./config.ts";
import { narrowNearest, widen } from "./half.ts";
import { stageMemory } from "./memory.ts";
import { type ParamSpec, sizeOf, type Stage, stageParameters, type StageRange } from "./opt.ts";
import { float32Array, type StorageDtype, type StoredWeight } from "./weights.ts";

const GIB = 2 ** 30;

/**
 * Refuses, before anything is read, a stage that would not fit this machine's available memory:
 * its weights at `dtype`, the half-precision scratch and the runtime (src/model/memory.ts
 * `stageMemory`, the arithmetic of `dpzo plan`; a run's activations are checked with its
 * micro-batch by cluster/plan.ts `checkFitsThisMachine` before a run starts). One line: the GiB
 * needed and available, and what to do. `available` defaults to the system's.
 */
export function ensureStageFits(
  config: OptConfig,
  range: StageRange,
  dtype: StorageDtype,
  available = Deno.systemMemoryInfo().available,
): void {
  const m = stageMemory(config, range, {
    dtype,
    mode: { type: "full" },
    microBatch: 1,
    seqLen: 1,
    activationDtype: "float32",
    threads: 1,
  });
  const need = m.weights_bytes + m.scratch_bytes + m.runtime_bytes;
  if (need <= available) return;
  const gib = (b: number) => (b / GIB).toFixed(1);
  const stages = Math.ceil(need / available);
  const layers = `layers ${range.firstLayer}-${range.endLayer - 1}` +
    (range.embeddings ? ", embeddings" : "") + (range.head ? ", LM head" : "");
  const half = dtype === "float32"
    ? ", or store the weights at 2 bytes each (dtype: bfloat16, --dtype bfloat16)"
    : "";
  throw new Error(
    `this stage (${layers}) needs ${gib(need)} GiB with its ${dtype} weights and this machine ` +
      `has ${gib(available)} GiB available: split the model over machines of this size with ` +
      `dpzo launch --stages ${stages} or more${half} (dpzo plan --model M shows the splits)`,
  );
}

/**
 * Loads only the tensors of `range` from a checkpoint, stored at `dtype` (default float32),
 * after checking that they fit this machine (`ensureStageFits`).
 */
export async function loadStage(
  ckpt: Checkpoint,
  range: StageRange,
  dtype: StorageDtype = "float32",
): Promise<Stage> {
  ensureStageFits(ckpt.config, range, dtype);
  const specs = stageParameters(ckpt.config, range);
  const weights = new Map<string, StoredWeight>();
  // One read buffer for the whole slice, not one per tensor (loads of several stages may
  // interleave at their awaits, so it is per call).
  const buf = new Uint8Array(LOAD_CHUNK_BYTES);
  for (const spec of specs) weights.set(spec.name, await loadParam(ckpt, spec, dtype, buf));
  return { config: ckpt.config, range, specs, weights, dtype };
}

/** Bytes read per chunk when a tensor streams from its file into the store. */
const LOAD_CHUNK_BYTES = 4 << 20;

/**
 * One parameter into a new store array of `dtype`, streamed from its file in 4 MiB chunks and
 * converted chunk by chunk (F32, F16 or BF16 on disk; half to float32 is exact, float32 to half
 * rounds to nearest even, F16 and BF16 convert through float32): the peak memory of loading is
 * the store itself.
 */
async function loadParam(
  ckpt: Checkpoint,
  spec: ParamSpec,
  dtype: StorageDtype,
  buf: Uint8Array,
): Promise<StoredWeight> {
  const loc = ckpt.tensors.get(spec.name);
  if (!loc) throw new Error(`${ckpt.dir}: tensor ${spec.name} is missing from the checkpoint`);
  if (loc.entry.shape.join(",") !== spec.shape.join(",")) {
    throw new Error(
      `${loc.path}: tensor ${spec.name} has shape [${loc.entry.shape}] but config.json implies ` +
        `[${spec.shape}]`,
    );
  }
  const n = sizeOf(spec);
  const onDisk = loc.entry.dtype;
  const out: StoredWeight = dtype === "float32"
    ? float32Array(n)
    : new Uint16Array(new ArrayBuffer(n * 2));
  // Raw bytes go straight into the store when the formats agree.
  const same = (onDisk === "F32" && dtype === "float32") ||
    (onDisk === "BF16" && dtype === "bfloat16") || (onDisk === "F16" && dtype === "float16");
  const inBytes = onDisk === "F32" ? 4 : 2;
  // A chunk holds whole elements.
  const chunk = Math.floor(buf.length / 4) * 4;
  const floats = same ? undefined : float32Array(chunk / inBytes);
  const file = await Deno.open(loc.path, { read: true });
  try {
    await file.seek(loc.entry.begin, Deno.SeekMode.Start);
    const total = loc.entry.byteLength;
    for (let done = 0; done < total;) {
      const want = Math.min(chunk, total - done);
      let got = 0;
      while (got < want) {
        const r = await file.read(buf.subarray(got, want));
        if (r === null) {
          throw new Error(
            `${loc.path}: tensor ${spec.name} is truncated (${done + got} of ${total})`,
          );
        }
        got += r;
      }
      const first = done / inBytes, count = want / inBytes;
      if (same) {
        new Uint8Array(out.buffer, out.byteOffset + done, want).set(buf.subarray(0, want));
      } else {
        const values = floats!.subarray(0, count);
        if (onDisk === "F32") new Uint8Array(values.buffer, 0, want).set(buf.subarray(0, want));
        else {
          const half = new Uint16Array(buf.buffer, 0, count);
          widen(half, onDisk === "BF16" ? "bfloat16" : "float16", values);
        }
        if (out instanceof Float32Array) out.set(values, first);
        else narrowNearest(values, dtype as "bfloat16" | "float16", out.subarray(first));
      }
      done += want;
    }
  } finally {
    file.close();
  }
  return out;
}

/** Builds a stage from float32 arrays (one per spec, HF layout), stored at `dtype`. */
export function stageFromArrays(
  config: OptConfig,
  range: StageRange,
  arrays: Map<string, Float32Array>,
  dtype: StorageDtype = "float32",
): Stage {
  const specs = stageParameters(config, range);
  const weights = new Map<string, StoredWeight>();
  for (const spec of specs) {
    const data = arrays.get(spec.name);
    if (!data || data.length !== sizeOf(spec)) {
      throw new Error(`stage: no data of ${sizeOf(spec)} floats for ${spec.name}`);
    }
    if (dtype === "float32") {
      const copy = float32Array(data.length);
      copy.set(data);
      weights.set(spec.name, copy);
    } else {
      const half = new Uint16Array(new ArrayBuffer(data.length * 2));
      narrowNearest(data, dtype, half);
      weights.set(spec.name, half);
    }
  }
  return { config, range, specs, weights, dtype };
}
