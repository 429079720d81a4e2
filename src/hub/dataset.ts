/**
 * `task.data` by name: a local file or directory keeps working; a Hub dataset id (optionally
 * `@revision`) fetches the parquet files of the task's splits through the same cache, under
 * `datasets--owner--name/snapshots/<commit>/`, and resolves to the folder that holds them
 * (`train-*.parquet` is the pool, `validation-*.parquet` the labelled test pool).
 */
import { type HubSettings, hubSettings } from "./env.ts";
import { HubError, HubRepo, type HubRepoOptions } from "./download.ts";
import { parseHubId, sharedFolderHint } from "./model.ts";

/** The paper's tasks in the Hub's parquet layouts (the datasets' `refs/convert/parquet`-free main). */
export const HUB_DATASETS: Record<string, Record<string, { folder: string; files: string[] }>> = {
  sst2: {
    "nyu-mll/glue": {
      folder: "sst2",
      files: ["sst2/train-00000-of-00001.parquet", "sst2/validation-00000-of-00001.parquet"],
    },
    "stanfordnlp/sst2": {
      folder: "data",
      files: ["data/train-00000-of-00001.parquet", "data/validation-00000-of-00001.parquet"],
    },
  },
  qnli: {
    "nyu-mll/glue": {
      folder: "qnli",
      files: ["qnli/train-00000-of-00001.parquet", "qnli/validation-00000-of-00001.parquet"],
    },
  },
  squad: {
    "rajpurkar/squad": {
      folder: "plain_text",
      files: [
        "plain_text/train-00000-of-00001.parquet",
        "plain_text/validation-00000-of-00001.parquet",
      ],
    },
  },
  drop: {
    "ucinlp/drop": {
      folder: "data",
      files: ["data/train-00000-of-00001.parquet", "data/validation-00000-of-00001.parquet"],
    },
  },
};

/** The dataset a task uses by default (what the README's configs name). */
export const DEFAULT_DATASET: Record<string, string> = {
  sst2: "nyu-mll/glue",
  qnli: "nyu-mll/glue",
  squad: "rajpurkar/squad",
  drop: "ucinlp/drop",
};

export interface ResolveDatasetOptions extends HubRepoOptions {
  settings?: HubSettings;
}

/** The local path for `task.data` of task `task`: itself when it exists, else a Hub dataset. */
export async function resolveTaskData(
  task: string,
  data: string,
  opts: ResolveDatasetOptions = {},
): Promise<string> {
  try {
    await Deno.stat(data);
    return data;
  } catch { /* not local */ }
  const ref = /^(\.{1,2}\/|\/|~)/.test(data) ? undefined : parseHubId(data);
  const layouts = HUB_DATASETS[task] ?? {};
  const known = Object.keys(layouts).join(", ") || "none";
  if (!ref) {
    throw new HubError(
      `task.data: ${data} is not a file or directory, nor a Hub dataset id; give a local path ` +
        `or one of ${known} (optionally @revision)${sharedFolderHint(data)}`,
    );
  }
  const layout = layouts[ref.id];
  if (!layout) {
    throw new HubError(
      `task.data: ${data}: dpzo knows the ${task} files of ${known} on the Hub, not of ${ref.id}; ` +
        `use one of those, or download the files and give their local directory`,
    );
  }
  const settings = opts.settings ?? hubSettings();
  const repo = new HubRepo(settings, { type: "dataset", id: ref.id }, ref.revision, opts);
  for (const f of layout.files) await repo.file(f);
  const dir = repo.cache.snapshotPath(repo.commit!, layout.folder);
  if (!opts.quiet) {
    (opts.log ?? ((l: string) => console.error(l)))(
      `task data ${ref.id}@${ref.revision}: commit ${repo.commit} in ${dir}`,
    );
  }
  return dir;
}
