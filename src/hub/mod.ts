/**
 * Models and data by name: Hugging Face Hub ids resolved through the standard cache that
 * Python's `huggingface_hub` shares (see env.ts for the variables, cache.ts for the layout).
 */
export { type HubSettings, hubSettings } from "./env.ts";
export { HubError, HubRepo, type HubRepoOptions } from "./download.ts";
export {
  type ModelRef,
  parseHubId,
  parseModelRef,
  type ResolvedModel,
  resolveModel,
  resolveModelConfig,
  resolveModelDir,
  type ResolveModelOptions,
} from "./model.ts";
export { DEFAULT_DATASET, HUB_DATASETS, resolveTaskData } from "./dataset.ts";
export { openResolvedCheckpoint } from "./checkpoint.ts";
export { RepoCache, repoFolderName } from "./cache.ts";

import { resolveModelDir } from "./model.ts";
import { resolveTaskData } from "./dataset.ts";
import type { HubRepoOptions } from "./download.ts";

/**
 * A run config with `model` and `task.data` made local (Hub ids fetched into the cache on first
 * use; local paths unchanged, so calling it again is free).
 */
export async function resolveRunInputs<
  T extends { model: string; task: { name: string; data: string } },
>(config: T, opts: HubRepoOptions = {}): Promise<T> {
  const model = await resolveModelDir(config.model, { ...opts, field: "model" });
  const data = await resolveTaskData(config.task.name, config.task.data, opts);
  if (model === config.model && data === config.task.data) return config;
  return { ...config, model, task: { ...config.task, data } };
}
