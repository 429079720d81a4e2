/**
 * safetensors files: read the header, read single tensors by seeking (so a pipeline stage reads
 * only the bytes of the tensors it owns), convert F32/F16/BF16 to float32, and write files
 * atomically (temporary name, then rename).
 *
 * Format: u64 little-endian header length N, N bytes of JSON
 * `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`, then the raw
 * little-endian data; offsets are relative to the end of the header.
 */
import { z } from "zod";
import { formatZodError } from "../validation.ts";
import { widen } from "./half.ts";

export type DType = "F32" | "F16" | "BF16";
const BYTES: Record<DType, number> = { F32: 4, F16: 2, BF16: 2 };

export interface TensorEntry {
  name: string;
  dtype: DType;
  shape: number[];
  /** Absolute byte offset of the data in the file. */
  begin: number;
  byteLength: number;
}

export interface SafetensorsHeader {
  path: string;
  tensors: Map<string, TensorEntry>;
  metadata: Record<string, string>;
}

const RawEntry = z.object({
  dtype: z.string(),
  shape: z.array(z.number().int().nonnegative()),
  data_offsets: z.tuple([z.number().int().nonnegative(), z.number().int().nonnegative()]),
});

/** Headers above this size are not plausible and are refused before reading them. */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

async function readExactly(file: Deno.FsFile, buf: Uint8Array): Promise<number> {
  let off = 0;
  while (off < buf.length) {
    const n = await file.read(buf.subarray(off));
    if (n === null) break;
    off += n;
  }
  return off;
}

/** Reads and validates the header of a safetensors file. */
export async function readSafetensorsHeader(path: string): Promise<SafetensorsHeader> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new Error(`${path}: not found`);
    throw e;
  }
  try {
    const fileSize = (await file.stat()).size;
    const lenBuf = new Uint8Array(8);
    if (await readExactly(file, lenBuf) < 8) {
      throw new Error(`${path}: truncated safetensors file (${fileSize} bytes, no header)`);
    }
    const headerLen = Number(new DataView(lenBuf.buffer).getBigUint64(0, true));
    if (headerLen > MAX_HEADER_BYTES || 8 + headerLen > fileSize) {
      throw new Error(
        `${path}: truncated or not a safetensors file (header length ${headerLen}, ` +
          `file size ${fileSize})`,
      );
    }
    const headerBuf = new Uint8Array(headerLen);
    await readExactly(file, headerBuf);
    let raw: unknown;
    try {
      raw = JSON.parse(new TextDecoder().decode(headerBuf));
    } catch {
      throw new Error(`${path}: safetensors header is not valid JSON`);
    }
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
      throw new Error(`${path}: safetensors header is not a JSON object`);
    }
    const dataStart = 8 + headerLen;
    const dataSize = fileSize - dataStart;
    const tensors = new Map<string, TensorEntry>();
    let metadata: Record<string, string> = {};
    for (const [name, value] of Object.entries(raw as Record<string, unknown>)) {
      if (name === "__metadata__") {
        metadata = (value ?? {}) as Record<string, string>;
        continue;
      }
      const r = RawEntry.safeParse(value);
      if (!r.success) {
        throw new Error(`${path}: tensor ${name}: ${formatZodError(r.error)}`);
      }
      const { dtype, shape, data_offsets: [begin, end] } = r.data;
      if (!(dtype in BYTES)) {
        throw new Error(
          `${path}: tensor ${name} has dtype ${dtype}; dpzo reads F32, F16 and BF16 ` +
            `(convert the checkpoint to one of them)`,
        );
      }
      const count = shape.reduce((a, b) => a * b, 1);
      const expected = count * BYTES[dtype as DType];
      if (end < begin || end - begin !== expected) {
        throw new Error(
          `${path}: tensor ${name}: data_offsets [${begin}, ${end}] hold ${end - begin} bytes ` +
            `but dtype ${dtype} shape [${shape}] needs ${expected}`,
        );
      }
      if (end > dataSize) {
        throw new Error(
          `${path}: tensor ${name}: data_offsets end ${end} lies beyond the data ` +
            `(${dataSize} bytes): the file is truncated or its header is wrong`,
        );
      }
      tensors.set(name, {
        name,
        dtype: dtype as DType,
        shape,
        begin: dataStart + begin,
        byteLength: expected,
      });
    }
    return { path, tensors, metadata };
  } finally {
    file.close();
  }
}

/** Converts raw little-endian tensor bytes to float32. */
export function toFloat32(bytes: Uint8Array, dtype: DType): Float32Array {
  if (dtype === "F32") {
    // Copy to an aligned buffer (bytes may sit at any offset).
    const out = new Float32Array(bytes.length / 4);
    new Uint8Array(out.buffer).set(bytes);
    return out;
  }
  const n = bytes.length / 2;
  const out = new Float32Array(n);
  const half = new Uint16Array(n);
  new Uint8Array(half.buffer).set(bytes);
  widen(half, dtype === "F16" ? "float16" : "bfloat16", out);
  return out;
}

/** Reads one tensor as float32, touching only its bytes. */
export async function readTensor(path: string, entry: TensorEntry): Promise<Float32Array> {
  const file = await Deno.open(path, { read: true });
  try {
    await file.seek(entry.begin, Deno.SeekMode.Start);
    const bytes = new Uint8Array(entry.byteLength);
    const got = await readExactly(file, bytes);
    if (got < entry.byteLength) {
      throw new Error(`${path}: tensor ${entry.name} is truncated (${got} of ${entry.byteLength})`);
    }
    return toFloat32(bytes, entry.dtype);
  } finally {
    file.close();
  }
}

export interface TensorToWrite {
  name: string;
  shape: number[];
  /** float32 values, or the raw bits of F16 / BF16 values (then `dtype` says which). */
  data: Float32Array | Uint16Array;
  dtype?: DType;
}

/**
 * Writes tensors (float32, or raw F16/BF16 bits) as a safetensors file, sorted by name, header
 * padded with spaces to a multiple of 8, through a temporary file renamed into place.
 */
export async function writeSafetensors(
  path: string,
  tensors: TensorToWrite[],
  metadata: Record<string, string> = { format: "pt" },
): Promise<void> {
  const sorted = [...tensors].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of sorted) {
    const dtype = t.dtype ?? "F32";
    if ((dtype === "F32") !== (t.data instanceof Float32Array)) {
      throw new Error(
        `writeSafetensors: ${t.name}: ${dtype} data must be a ${
          dtype === "F32" ? "Float32Array" : "Uint16Array of raw bits"
        }`,
      );
    }
    const bytes = t.data.byteLength;
    header[t.name] = { dtype, shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  while ((8 + new TextEncoder().encode(json).length) % 8 !== 0) json += " ";
  const headerBytes = new TextEncoder().encode(json);
  const tmp = `${path}.tmp-${Deno.pid}`;
  const file = await Deno.open(tmp, { write: true, create: true, truncate: true });
  try {
    const len = new Uint8Array(8);
    new DataView(len.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
    await writeAll(file, len);
    await writeAll(file, headerBytes);
    for (const t of sorted) {
      await writeAll(file, new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    }
    await file.sync();
  } catch (e) {
    file.close();
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
  file.close();
  await Deno.rename(tmp, path);
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await file.write(bytes.subarray(off));
}
