/**
 * A Hugging Face OPT checkpoint directory: `config.json` plus `model.safetensors`, or the
 * sharded `model.safetensors.index.json` with its shards. Tensors are found by their canonical
 * Hugging Face name (`model.decoder.…`; checkpoints that use `decoder.…` are accepted) and read
 * one at a time, so a stage loads only what it owns.
 */
import { z } from "zod";
import { formatZodError } from "../validation.ts";
import { loadOptConfig, type OptConfig } from "./config.ts";
import { readSafetensorsHeader, readTensor, type TensorEntry } from "./safetensors.ts";
import { adapterFolderProblem } from "./peft.ts";

export interface TensorLocation {
  path: string;
  entry: TensorEntry;
}

export interface Checkpoint {
  dir: string;
  config: OptConfig;
  /** Canonical name (`model.decoder.…`) -> where its bytes are. */
  tensors: Map<string, TensorLocation>;
}

const IndexFile = z.object({
  weight_map: z.record(z.string(), z.string()),
});

/** `decoder.x` and `model.decoder.x` both become `model.decoder.x`; `lm_head.weight` is tied. */
export function canonicalName(name: string): string | undefined {
  if (name === "lm_head.weight") return undefined;
  if (name.startsWith("model.decoder.")) return name;
  if (name.startsWith("decoder.")) return `model.${name}`;
  return name;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** The safetensors files of a model directory, with a clear error when there are none. */
async function safetensorsFiles(dir: string): Promise<string[]> {
  const index = `${dir}/model.safetensors.index.json`;
  if (await exists(index)) {
    let raw: unknown;
    try {
      raw = JSON.parse(await Deno.readTextFile(index));
    } catch (e) {
      throw new Error(`${index}: not valid JSON (${(e as Error).message})`);
    }
    const r = IndexFile.safeParse(raw);
    if (!r.success) throw new Error(`${index}: ${formatZodError(r.error)}`);
    const shards = [...new Set(Object.values(r.data.weight_map))].sort();
    for (const s of shards) {
      if (!(await exists(`${dir}/${s}`))) {
        throw new Error(`${index}: shard ${s} is listed but missing from ${dir}`);
      }
    }
    return shards.map((s) => `${dir}/${s}`);
  }
  if (await exists(`${dir}/model.safetensors`)) return [`${dir}/model.safetensors`];
  const others: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile && e.name.endsWith(".safetensors")) others.push(`${dir}/${e.name}`);
  }
  if (others.length === 1) return others;
  if (others.length > 1) {
    throw new Error(
      `${dir}: several .safetensors files and no model.safetensors.index.json; ` +
        `keep one model.safetensors or add the index`,
    );
  }
  if (
    await exists(`${dir}/pytorch_model.bin`) || await exists(`${dir}/pytorch_model.bin.index.json`)
  ) {
    throw new Error(
      `${dir}: only pytorch_model.bin found; dpzo reads safetensors. Convert it in Python with ` +
        `AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT, safe_serialization=True)`,
    );
  }
  throw new Error(`${dir}: no model.safetensors (or model.safetensors.index.json) found`);
}

/** Opens a checkpoint directory: validates the config and indexes every tensor. */
export async function openCheckpoint(dir: string, safetensorsFile?: string): Promise<Checkpoint> {
  // A PEFT adapter folder is never read as its base model (peft.ts).
  const adapter = await adapterFolderProblem(dir);
  if (adapter) throw new Error(adapter);
  const config = await loadOptConfig(dir);
  const files = safetensorsFile ? [safetensorsFile] : await safetensorsFiles(dir);
  const tensors = new Map<string, TensorLocation>();
  for (const path of files) {
    const header = await readSafetensorsHeader(path);
    for (const [name, entry] of header.tensors) {
      const canonical = canonicalName(name);
      if (canonical === undefined) continue;
      tensors.set(canonical, { path, entry });
    }
  }
  return { dir, config, tensors };
}

/** Reads one tensor by canonical name and checks its shape. */
export async function loadTensor(
  ckpt: Checkpoint,
  name: string,
  shape: number[],
): Promise<Float32Array> {
  const loc = ckpt.tensors.get(name);
  if (!loc) {
    throw new Error(`${ckpt.dir}: tensor ${name} is missing from the checkpoint`);
  }
  if (loc.entry.shape.join(",") !== shape.join(",")) {
    throw new Error(
      `${loc.path}: tensor ${name} has shape [${loc.entry.shape}] but config.json implies ` +
        `[${shape}]`,
    );
  }
  return await readTensor(loc.path, loc.entry);
}
