/**
 * Opens a resolved Hub model for one pipeline stage: only the shards that were fetched for the
 * stage are indexed (openCheckpoint insists on every shard of the index being present).
 */
import {
  canonicalName,
  type Checkpoint,
  openCheckpoint,
  type TensorLocation,
} from "../model/checkpoint.ts";
import { loadOptConfig } from "../model/config.ts";
import { readSafetensorsHeader } from "../model/safetensors.ts";
import type { ResolvedModel } from "./model.ts";

export async function openResolvedCheckpoint(model: ResolvedModel): Promise<Checkpoint> {
  if (!model.weightFiles) return await openCheckpoint(model.dir);
  const config = await loadOptConfig(model.dir);
  const tensors = new Map<string, TensorLocation>();
  for (const path of model.weightFiles) {
    const header = await readSafetensorsHeader(path);
    for (const [name, entry] of header.tensors) {
      const canonical = canonicalName(name);
      if (canonical !== undefined) tensors.set(canonical, { path, entry });
    }
  }
  return { dir: model.dir, config, tensors };
}
