/**
 * `--model` and the config's `model`: a local checkpoint directory, or a Hub model id with an
 * optional revision (`facebook/opt-125m`, `facebook/opt-125m@main`, `...@<commit>`,
 * `...@refs/pr/3`). A Hub id resolves to `snapshots/<commit>/` in the standard cache, fetching
 * only what dpzo reads: config.json, the tokenizer files, and the safetensors file, or the index
 * and (for a pipeline stage, only) the shards that hold the stage's tensors.
 */
import { z } from "zod";
import { canonicalName } from "../model/checkpoint.ts";
import { adapterFolderProblem } from "../model/peft.ts";
import { formatZodError } from "../validation.ts";
import { type HubSettings, hubSettings } from "./env.ts";
import { checkRepoPath, HubError, HubRepo, type HubRepoOptions } from "./download.ts";

export type ModelRef =
  | { kind: "local"; dir: string }
  | { kind: "hub"; id: string; revision: string };

/** `owner/name` or a legacy single `name`, as the Hub allows them. */
const HUB_ID = /^(?:[A-Za-z0-9][\w.-]{0,95}\/)?[A-Za-z0-9][\w.-]{0,95}$/;

/** Parses a hub id with an optional `@revision`; undefined when `text` is not one. */
export function parseHubId(text: string): { id: string; revision: string } | undefined {
  const at = text.indexOf("@");
  const id = at < 0 ? text : text.slice(0, at);
  const revision = at < 0 ? "main" : text.slice(at + 1);
  if (!HUB_ID.test(id) || id.includes("--") || id.includes("..") || /\.$/.test(id)) {
    return undefined;
  }
  if (revision === "" || revision.split("/").some((s) => s === "" || s === "." || s === "..")) {
    return undefined;
  }
  return { id, revision };
}

/**
 * For a missing path inside `../shared`: what that folder is and how to do without it (the
 * configs in configs/ read their model and data from it).
 */
export function sharedFolderHint(path: string): string {
  if (!/(^|\/)shared\//.test(path)) return "";
  return `. ${path.split("shared/")[0]}shared is dpzo's companion folder (the tiny OPT ` +
    `fixtures and the task data) that sits beside the clone (README, Start); put it there, or ` +
    `run on the Hub: --set model=facebook/opt-125m --set task.data=nyu-mll/glue, or ` +
    `configs/opt-125m-sst2.yaml`;
}

/** An existing path is local; otherwise a valid Hub id is a Hub model. */
export async function parseModelRef(text: string, field = "--model"): Promise<ModelRef> {
  try {
    await Deno.stat(text);
    return { kind: "local", dir: text };
  } catch { /* not a local path */ }
  const looksLikePath = /^(\.{1,2}\/|\/|~)/.test(text) || text.endsWith("/") ||
    text.split("@")[0].split("/").length > 2;
  const hub = looksLikePath ? undefined : parseHubId(text);
  if (!hub) {
    throw new HubError(
      `${field}: ${text} is not a directory, nor a Hub model id; give a checkpoint directory ` +
        `or an id like facebook/opt-125m (optionally @revision)${sharedFolderHint(text)}`,
    );
  }
  return { kind: "hub", ...hub };
}

export interface ResolvedModel {
  /** The directory to open (the snapshot folder for a Hub model). */
  dir: string;
  /** Hub provenance; absent for a local directory. */
  hub?: { id: string; revision: string; commit: string };
  /** The safetensors files fetched (Hub only): all of them, or a stage's shards. */
  weightFiles?: string[];
}

export interface ResolveModelOptions extends HubRepoOptions {
  settings?: HubSettings;
  /** Only the shards holding tensors (canonical `model.decoder.…` names) this accepts. */
  tensors?: (name: string) => boolean;
  field?: string;
}

const IndexFile = z.object({ weight_map: z.record(z.string(), z.string()) });

/** Resolves `--model`: a local directory as is, a Hub id through the cache. */
export async function resolveModel(
  text: string,
  opts: ResolveModelOptions = {},
): Promise<ResolvedModel> {
  const ref = await parseModelRef(text, opts.field);
  if (ref.kind === "local") {
    const adapter = await adapterFolderProblem(ref.dir); // never read an adapter as its base
    if (adapter) throw new Error(`${opts.field ?? "--model"}: ${adapter}`);
    return { dir: ref.dir };
  }
  const settings = opts.settings ?? hubSettings();
  const repo = new HubRepo(settings, { type: "model", id: ref.id }, ref.revision, opts);
  await repo.file("config.json");
  // The tokenizer: vocab.json + merges.txt (what OPT ships), else tokenizer.json.
  const vocab = await repo.file("vocab.json", { optional: true });
  const merges = await repo.file("merges.txt", { optional: true });
  if (!vocab || !merges) {
    const tj = await repo.file("tokenizer.json", { optional: true });
    if (!tj) {
      throw new HubError(
        `${repo.label}: the repository has no tokenizer (vocab.json + merges.txt or ` +
          `tokenizer.json); use an OPT model repository`,
      );
    }
  }
  await repo.file("tokenizer_config.json", { optional: true });
  await repo.file("special_tokens_map.json", { optional: true });

  // transformers' order: model.safetensors, else the sharded index (so a cache that Python
  // filled with a single-file model needs no request about an index it never looked for).
  const weightFiles: string[] = [];
  const single = await repo.file("model.safetensors", { optional: true });
  const index = single ? undefined : await repo.file("model.safetensors.index.json", {
    optional: true,
  });
  if (single) {
    weightFiles.push(single);
  } else if (index) {
    let raw: unknown;
    try {
      raw = JSON.parse(await Deno.readTextFile(index));
    } catch (e) {
      throw new HubError(`${index}: not valid JSON (${(e as Error).message})`);
    }
    const r = IndexFile.safeParse(raw);
    if (!r.success) throw new HubError(`${index}: ${formatZodError(r.error)}`);
    const shards = new Set<string>();
    for (const [name, shard] of Object.entries(r.data.weight_map)) {
      const canonical = canonicalName(name);
      if (canonical === undefined) continue;
      if (opts.tensors && !opts.tensors(canonical)) continue;
      checkRepoPath(shard, `${index}: weight_map.${name}`);
      shards.add(shard);
    }
    for (const s of [...shards].sort()) weightFiles.push((await repo.file(s))!);
  } else {
    throw new HubError(
      `${repo.label}: the repository has no model.safetensors (nor model.safetensors.index.json); ` +
        `dpzo reads safetensors: pick a revision that has them (the Hub's safetensors ` +
        `conversion is often a pull request, e.g. ${ref.id}@refs/pr/N) or convert it in Python ` +
        `with save_pretrained(OUT, safe_serialization=True) and pass OUT`,
    );
  }
  const commit = repo.commit!;
  return {
    dir: repo.cache.snapshotPath(commit),
    hub: { id: ref.id, revision: ref.revision, commit },
    weightFiles,
  };
}

/** The directory a `--model` value names (downloading a Hub model on first use). */
export async function resolveModelDir(
  text: string,
  opts: ResolveModelOptions = {},
): Promise<string> {
  const r = await resolveModel(text, opts);
  if (r.hub && !opts.quiet) {
    (opts.log ?? ((l: string) => console.error(l)))(
      `model ${r.hub.id}@${r.hub.revision}: commit ${r.hub.commit} in ${r.dir}`,
    );
  }
  return r.dir;
}

/**
 * The `config.json` a `--model` value names, without any weights: a local directory's, a
 * config file given itself, or a Hub model's, fetched alone into the cache (for `dpzo plan` and
 * the memory check of `dpzo launch`).
 */
export async function resolveModelConfig(
  text: string,
  opts: ResolveModelOptions = {},
): Promise<string> {
  try {
    if ((await Deno.stat(text)).isFile) return text;
  } catch { /* not a local file */ }
  const ref = await parseModelRef(text, opts.field);
  if (ref.kind === "local") return `${ref.dir}/config.json`;
  const settings = opts.settings ?? hubSettings();
  const repo = new HubRepo(settings, { type: "model", id: ref.id }, ref.revision, opts);
  return (await repo.file("config.json"))!;
}
