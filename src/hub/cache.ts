/**
 * The Hugging Face Hub cache layout, as Python's `huggingface_hub` writes it:
 *
 *   <cache>/models--owner--name/refs/<revision>            the commit hash a branch/tag points to
 *   <cache>/models--owner--name/blobs/<etag>               file contents, named by the Hub's etag
 *   <cache>/models--owner--name/blobs/<etag>.incomplete    a partial download (resumed by Range)
 *   <cache>/models--owner--name/snapshots/<commit>/<file>  relative symlink to ../../blobs/<etag>
 *   <cache>/models--owner--name/.no_exist/<commit>/<file>  the file is known not to exist
 *   <cache>/.locks/models--owner--name/<etag>.lock         download lock
 *
 * Datasets use `datasets--owner--name`. dpzo adds one folder Python ignores:
 * `<repo folder>/.dpzo-verified/<etag>` remembers that a blob's content was checked against its
 * etag (size and mtime), so cached files are hashed once, not on every run.
 */
import { createHash } from "node:crypto";

export type RepoType = "model" | "dataset";

export interface RepoRef {
  type: RepoType;
  /** `owner/name` (or a legacy single `name`). */
  id: string;
}

/** `models--facebook--opt-125m`. */
export function repoFolderName(repo: RepoRef): string {
  return [`${repo.type}s`, ...repo.id.split("/")].join("--");
}

/**
 * The Hub model a cache snapshot folder holds (`.../models--facebook--opt-125m/snapshots/<commit>`
 * -> facebook/opt-125m at that commit); undefined for any other path.
 */
export function snapshotModel(dir: string): { id: string; commit: string } | undefined {
  const m = /(?:^|\/)models--([^/]+)\/snapshots\/([0-9a-f]{40})\/?$/.exec(dir);
  return m ? { id: m[1].split("--").join("/"), commit: m[2] } : undefined;
}

export function isCommitHash(revision: string): boolean {
  return /^[0-9a-f]{40}$/.test(revision);
}

export class RepoCache {
  readonly folder: string;
  readonly lockFolder: string;

  constructor(readonly cache: string, readonly repo: RepoRef) {
    this.folder = `${cache}/${repoFolderName(repo)}`;
    this.lockFolder = `${cache}/.locks/${repoFolderName(repo)}`;
  }

  refPath(revision: string): string {
    return `${this.folder}/refs/${revision}`;
  }
  blobPath(etag: string): string {
    return `${this.folder}/blobs/${etag}`;
  }
  snapshotPath(commit: string, file = ""): string {
    return `${this.folder}/snapshots/${commit}${file ? `/${file}` : ""}`;
  }
  noExistPath(commit: string, file: string): string {
    return `${this.folder}/.no_exist/${commit}/${file}`;
  }
  stampPath(etag: string): string {
    return `${this.folder}/.dpzo-verified/${etag}`;
  }

  /** The commit a revision names in the cache: itself when it is a hash, else refs/<revision>. */
  async commitOf(revision: string): Promise<string | undefined> {
    if (isCommitHash(revision)) return revision;
    try {
      const c = (await Deno.readTextFile(this.refPath(revision))).trim();
      return isCommitHash(c) ? c : undefined;
    } catch {
      return undefined;
    }
  }

  async writeRef(revision: string, commit: string): Promise<void> {
    if (isCommitHash(revision) || (await this.commitOf(revision)) === commit) return;
    const path = this.refPath(revision);
    await Deno.mkdir(dirname(path), { recursive: true });
    await writeAtomic(path, commit);
  }

  /** The snapshot's file when present (a link that resolves, or a plain copy). */
  async cachedFile(commit: string, file: string): Promise<string | undefined> {
    const path = this.snapshotPath(commit, file);
    try {
      const s = await Deno.stat(path); // follows the link
      return s.isFile ? path : undefined;
    } catch {
      return undefined;
    }
  }

  /** The etag of a cached snapshot file: the name of the blob its link points to. */
  async etagOf(commit: string, file: string): Promise<string | undefined> {
    try {
      const target = await Deno.readLink(this.snapshotPath(commit, file));
      return target.split("/").pop();
    } catch {
      return undefined; // a plain file (e.g. a cache made where symlinks were unavailable)
    }
  }

  async knownMissing(commit: string, file: string): Promise<boolean> {
    try {
      await Deno.stat(this.noExistPath(commit, file));
      return true;
    } catch {
      return false;
    }
  }

  async markMissing(commit: string, file: string): Promise<void> {
    const path = this.noExistPath(commit, file);
    await Deno.mkdir(dirname(path), { recursive: true });
    await Deno.writeFile(path, new Uint8Array());
  }

  /** snapshots/<commit>/<file> -> ../../blobs/<etag> (one more ../ per folder in `file`). */
  async linkSnapshot(commit: string, file: string, etag: string): Promise<string> {
    const path = this.snapshotPath(commit, file);
    await Deno.mkdir(dirname(path), { recursive: true });
    const depth = file.split("/").length + 1;
    const target = `${"../".repeat(depth)}blobs/${etag}`;
    await Deno.remove(path).catch(() => {});
    try {
      await Deno.symlink(target, path);
    } catch {
      await Deno.copyFile(this.blobPath(etag), path); // no symlinks here: a copy, like Python
    }
    return path;
  }

  /** Whether the blob was already checked against its etag and is unchanged since. */
  async stamped(etag: string, blob: string): Promise<boolean> {
    try {
      const [stamp, s] = await Promise.all([
        Deno.readTextFile(this.stampPath(etag)),
        Deno.stat(blob),
      ]);
      return stamp.trim() === stampOf(s);
    } catch {
      return false;
    }
  }

  async stamp(etag: string, blob: string): Promise<void> {
    const path = this.stampPath(etag);
    await Deno.mkdir(dirname(path), { recursive: true });
    await writeAtomic(path, stampOf(await Deno.stat(blob)));
  }

  async unstamp(etag: string): Promise<void> {
    await Deno.remove(this.stampPath(etag)).catch(() => {});
  }
}

function stampOf(s: Deno.FileInfo): string {
  return `${s.size} ${s.mtime?.getTime() ?? 0}`;
}

export function dirname(path: string): string {
  const i = path.lastIndexOf("/");
  return i <= 0 ? "/" : path.slice(0, i);
}

export async function writeAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
  await Deno.writeTextFile(tmp, text);
  await Deno.rename(tmp, path);
}

/**
 * What an etag says about a file's content: a 64-hex etag is the sha256 of an LFS file, a 40-hex
 * etag the git blob id (sha1 of `blob <size>\0` + content) of a regular file. Anything else
 * (a mirror's own etags) cannot be checked.
 */
export function etagKind(etag: string): "sha256" | "git-sha1" | "opaque" {
  if (/^[0-9a-f]{64}$/.test(etag)) return "sha256";
  if (/^[0-9a-f]{40}$/.test(etag)) return "git-sha1";
  return "opaque";
}

/** The digest of a file in the etag's scheme (undefined for an opaque etag). */
export async function contentDigest(path: string, etag: string): Promise<string | undefined> {
  const kind = etagKind(etag);
  if (kind === "opaque") return undefined;
  const h = createHash(kind === "sha256" ? "sha256" : "sha1");
  if (kind === "git-sha1") h.update(`blob ${(await Deno.stat(path)).size}\0`);
  const file = await Deno.open(path);
  for await (const chunk of file.readable) h.update(chunk); // closes the file at the end
  return h.digest("hex");
}
