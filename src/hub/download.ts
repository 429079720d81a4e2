/**
 * Files of one Hub repository at one revision, through the standard cache (see cache.ts).
 *
 * A file already in the snapshot of the cached commit is used without any request (its blob is
 * checked once against its etag). Otherwise, as `huggingface_hub` does: HEAD
 * `{endpoint}/{repo}/resolve/{revision}/{file}` (relative redirects followed, the redirect to the
 * CDN not), read `X-Repo-Commit`, `X-Linked-Etag`/`ETag`, `X-Linked-Size`/`Content-Length`,
 * reuse `blobs/<etag>` if present, else GET into `blobs/<etag>.incomplete` (resumed with `Range`),
 * verify size and content (sha256 for LFS files, the git blob id for others), rename, and link
 * `snapshots/<commit>/<file>`. The first file pins the commit: every later file of the same repo
 * comes from that commit, so a model is never a mix of two commits.
 */
import { z } from "zod";
import { UsageError } from "../validation.ts";
import { contentDigest, dirname, isCommitHash, RepoCache, type RepoRef } from "./cache.ts";
import type { HubSettings } from "./env.ts";
import { FileProgress, type ProgressSink } from "./progress.ts";

/** A Hub problem the user has to act on: printed as one line. */
export class HubError extends UsageError {
  override name = "HubError";
}

export interface HubRepoOptions extends ProgressSink {
  /** Injected for tests; default globalThis.fetch. */
  fetch?: typeof fetch;
  /** Attempts per download before giving up (each resumes where the last stopped). */
  attempts?: number;
  /** Silence the progress output. */
  quiet?: boolean;
}

const Metadata = z.object({
  commit: z.string().regex(/^[0-9a-f]{40}$/, { error: "expected a 40-hex commit hash" }),
  etag: z.string().min(1, { error: "missing" }).regex(/^[^/\\\s]+$/, {
    error: "not usable as a file name",
  }),
  size: z.coerce.number().int().nonnegative().optional(),
});

interface FileMetadata extends z.infer<typeof Metadata> {
  /** Where to GET the content (the CDN URL of a redirect, or the resolve URL itself). */
  location: string;
}

/** `W/"abc"` -> `abc`. */
export function normalizeEtag(etag: string | null): string | undefined {
  if (etag === null) return undefined;
  return etag.replace(/^W\//, "").replace(/^"|"$/g, "");
}

function encodePath(path: string): string {
  return path.split("/").map(encodeURIComponent).join("/");
}

/** Rejects file names that would escape the snapshot folder. */
export function checkRepoPath(file: string, where: string): void {
  if (
    file === "" || file.startsWith("/") || file.includes("\\") ||
    file.split("/").some((s) => s === "" || s === "." || s === "..")
  ) {
    throw new HubError(
      `${where}: ${JSON.stringify(file)} is not a valid file path in a repository`,
    );
  }
}

export class HubRepo {
  readonly cache: RepoCache;
  #commit: string | undefined;
  #fetch: typeof fetch;
  #opts: HubRepoOptions;
  /** Requests made (for tests and the run log). */
  requests = 0;

  constructor(
    readonly settings: HubSettings,
    readonly repo: RepoRef,
    readonly revision: string,
    opts: HubRepoOptions = {},
  ) {
    this.cache = new RepoCache(settings.cache, repo);
    this.#fetch = opts.fetch ?? globalThis.fetch;
    this.#opts = opts;
  }

  /** `facebook/opt-125m@main` (datasets: `datasets/owner/name@rev`). */
  get label(): string {
    return `${this.repo.type === "dataset" ? "datasets/" : ""}${this.repo.id}@${this.revision}`;
  }

  /** The commit this repo resolves to (after the first file). */
  get commit(): string | undefined {
    return this.#commit;
  }

  /**
   * The local path of `file` (in the snapshot of the commit), downloading it if needed.
   * `undefined` for an optional file the repo does not have.
   */
  async file(file: string, opts: { optional?: boolean } = {}): Promise<string | undefined> {
    checkRepoPath(file, this.label);
    this.#commit ??= await this.cache.commitOf(this.revision);
    if (this.#commit) {
      const cached = await this.#fromCache(this.#commit, file);
      if (cached) return cached;
      if (await this.cache.knownMissing(this.#commit, file)) return this.#absent(file, opts);
    }
    if (this.settings.offline) {
      if (opts.optional) return undefined; // as transformers: an optional file is just absent
      const where = this.#commit
        ? this.cache.snapshotPath(this.#commit, file)
        : this.cache.refPath(this.revision);
      throw new HubError(
        `HF_HUB_OFFLINE=1: ${this.label}: ${file} is not in the cache (${where} is missing); ` +
          `run once with network access (unset HF_HUB_OFFLINE) or copy the model to a local directory`,
      );
    }
    const meta = await this.#head(file);
    if (meta === undefined) return this.#absent(file, opts);
    if (!this.#commit) {
      this.#commit = meta.commit;
      await this.cache.writeRef(this.revision, meta.commit);
    }
    const blob = this.cache.blobPath(meta.etag);
    if (!(await this.#blobOk(meta.etag, blob))) await this.#download(file, meta, blob);
    return await this.cache.linkSnapshot(this.#commit, file, meta.etag);
  }

  #absent(file: string, opts: { optional?: boolean }): undefined {
    if (opts.optional) return undefined;
    throw new HubError(`${this.label}: the repository has no file ${file}`);
  }

  /** A cached snapshot file whose blob matches its etag; a corrupted blob is removed. */
  async #fromCache(commit: string, file: string): Promise<string | undefined> {
    const path = await this.cache.cachedFile(commit, file);
    if (!path) return undefined;
    const etag = await this.cache.etagOf(commit, file);
    if (etag === undefined) return path; // a plain copy: nothing to check it against
    const blob = this.cache.blobPath(etag);
    if (await this.#blobOk(etag, blob)) return path;
    await Deno.remove(this.cache.snapshotPath(commit, file)).catch(() => {});
    const msg = `${blob}: corrupted (its content does not match the etag ${etag} of ${file}); ` +
      `removed it`;
    if (this.settings.offline) {
      throw new HubError(`${msg}; unset HF_HUB_OFFLINE so that dpzo can download it again`);
    }
    this.#log(`${msg}, downloading it again`);
    return undefined;
  }

  /** True when the blob exists and its content matches the etag (checked once, then stamped). */
  async #blobOk(etag: string, blob: string): Promise<boolean> {
    try {
      await Deno.stat(blob);
    } catch {
      return false;
    }
    if (await this.cache.stamped(etag, blob)) return true;
    const digest = await contentDigest(blob, etag);
    if (digest !== undefined && digest !== etag) {
      await this.cache.unstamp(etag);
      await Deno.remove(blob).catch(() => {});
      return false;
    }
    await this.cache.stamp(etag, blob);
    return true;
  }

  #log(line: string): void {
    if (!this.#opts.quiet) (this.#opts.log ?? ((l: string) => console.error(l)))(line);
  }

  #headers(url: string): Headers {
    const h = new Headers({
      "User-Agent": `dpzo; deno/${Deno.version.deno}`,
      "Accept-Encoding": "identity",
    });
    if (this.settings.token && new URL(url).origin === new URL(this.settings.endpoint).origin) {
      h.set("Authorization", `Bearer ${this.settings.token}`);
    }
    return h;
  }

  async #request(url: string, init: RequestInit): Promise<Response> {
    this.requests++;
    try {
      return await this.#fetch(url, init);
    } catch (e) {
      throw new HubError(
        `HF_ENDPOINT ${this.settings.endpoint}: cannot reach it for ${this.label} ` +
          `(${(e as Error).message.split("\n")[0]}); check the network or set HF_HUB_OFFLINE=1 ` +
          `to use only the cache`,
      );
    }
  }

  /** HEAD on /resolve/: the file's metadata, or undefined when the repo has no such file. */
  async #head(file: string): Promise<FileMetadata | undefined> {
    const prefix = this.repo.type === "dataset" ? "datasets/" : "";
    const rev = encodeURIComponent(this.#commit ?? this.revision);
    let url = `${this.settings.endpoint}/${prefix}${this.repo.id}/resolve/${rev}/${
      encodePath(file)
    }`;
    let res: Response;
    for (let hops = 0;; hops++) {
      res = await this.#request(url, {
        method: "HEAD",
        redirect: "manual",
        headers: this.#headers(url),
      });
      await res.body?.cancel();
      const loc = res.headers.get("Location");
      // Relative redirects (a renamed repo) are followed; the one to the CDN is not.
      if (res.status >= 300 && res.status < 400 && loc && !/^[a-z][a-z0-9+.-]*:/i.test(loc)) {
        if (hops >= 10) throw new HubError(`${this.label}: ${file}: too many redirects`);
        url = new URL(loc, url).href;
        continue;
      }
      break;
    }
    const code = res.headers.get("X-Error-Code");
    if (res.status === 404 && code === "EntryNotFound") {
      const commit = res.headers.get("X-Repo-Commit") ?? this.#commit;
      if (commit && isCommitHash(commit)) {
        if (!this.#commit) {
          this.#commit = commit;
          await this.cache.writeRef(this.revision, commit);
        }
        await this.cache.markMissing(this.#commit, file);
      }
      return undefined;
    }
    if (code === "RevisionNotFound") {
      throw new HubError(
        `${this.label}: the Hub has no revision ${this.revision} of ${this.repo.id}; ` +
          `use a branch, tag or commit hash that exists (e.g. @main)`,
      );
    }
    if (
      code === "RepoNotFound" || code === "GatedRepo" || res.status === 401 || res.status === 403
    ) {
      const kind = this.repo.type === "dataset" ? "dataset" : "model";
      throw new HubError(
        `${this.label}: ${this.settings.endpoint} has no ${kind} ${this.repo.id} that you can read ` +
          `(HTTP ${res.status}${
            code ? ` ${code}` : ""
          }); check the name, and for a private or gated ` +
          (this.settings.token
            ? `repository make sure the token from ${this.settings.tokenSource} has access (accept its terms on the Hub)`
            : `repository set HF_TOKEN (or log in with huggingface-cli login)`),
      );
    }
    if (res.status === 404) {
      throw new HubError(
        `${this.label}: ${this.settings.endpoint} answered 404 for ${file}; check the name ` +
          `(and HF_ENDPOINT)`,
      );
    }
    if (res.status >= 400) {
      throw new HubError(
        `${this.label}: ${file}: HEAD ${url} failed with HTTP ${res.status}; try again later`,
      );
    }
    const linkedSize = res.headers.get("X-Linked-Size") ?? res.headers.get("Content-Length");
    const parsed = Metadata.safeParse({
      commit: res.headers.get("X-Repo-Commit") ?? "",
      etag: normalizeEtag(res.headers.get("X-Linked-Etag") ?? res.headers.get("ETag")) ?? "",
      size: linkedSize ?? undefined,
    });
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      const header = { commit: "X-Repo-Commit", etag: "X-Linked-Etag/ETag", size: "X-Linked-Size" }[
        String(issue.path[0]) as "commit" | "etag" | "size"
      ];
      throw new HubError(
        `${this.label}: ${file}: the answer of ${url} has a bad ${header} header (${issue.message}); ` +
          `is HF_ENDPOINT (${this.settings.endpoint}) a Hugging Face Hub?`,
      );
    }
    const loc = res.headers.get("Location");
    const location = res.status >= 300 && res.status < 400 && loc ? new URL(loc, url).href : url;
    return { ...parsed.data, location };
  }

  async #download(file: string, meta: FileMetadata, blob: string): Promise<void> {
    await Deno.mkdir(dirname(blob), { recursive: true });
    await Deno.mkdir(this.cache.lockFolder, { recursive: true });
    const lock = await Deno.open(`${this.cache.lockFolder}/${meta.etag}.lock`, {
      create: true,
      write: true,
    });
    try {
      await lock.lock(true);
      if (await this.#blobOk(meta.etag, blob)) return; // another process finished it
      const incomplete = `${blob}.incomplete`;
      const attempts = this.#opts.attempts ?? 5;
      for (let attempt = 1;; attempt++) {
        try {
          await this.#get(file, meta, incomplete);
          break;
        } catch (e) {
          if (!(e instanceof Interrupted) || attempt >= attempts) {
            if (e instanceof Interrupted) {
              throw new HubError(
                `${this.label}: ${file}: download interrupted ${attempts} times (${e.message}); ` +
                  `run the command again to resume from ${incomplete}`,
              );
            }
            throw e;
          }
          this.#log(`${file}: ${e.message}; resuming (attempt ${attempt + 1} of ${attempts})`);
          await new Promise((r) => setTimeout(r, Math.min(200 * attempt, 2000)));
        }
      }
      const size = (await Deno.stat(incomplete)).size;
      if (meta.size !== undefined && size !== meta.size) {
        await Deno.remove(incomplete);
        throw new HubError(
          `${this.label}: ${file}: downloaded ${size} bytes but the Hub reports ${meta.size}; ` +
            `the partial file was removed, run the command again`,
        );
      }
      const digest = await contentDigest(incomplete, meta.etag);
      if (digest !== undefined && digest !== meta.etag) {
        await Deno.remove(incomplete);
        throw new HubError(
          `${this.label}: ${file}: the downloaded content does not match its etag ${meta.etag} ` +
            `(got ${digest}); it was removed, run the command again`,
        );
      }
      await Deno.rename(incomplete, blob);
      await this.cache.stamp(meta.etag, blob);
    } finally {
      lock.close(); // releases the lock
    }
  }

  /** One GET into `incomplete`, resuming from its current size. */
  async #get(file: string, meta: FileMetadata, incomplete: string): Promise<void> {
    let resume = 0;
    try {
      resume = (await Deno.stat(incomplete)).size;
    } catch { /* a fresh download */ }
    if (meta.size !== undefined && resume > meta.size) {
      await Deno.truncate(incomplete, 0);
      resume = 0;
    }
    if (meta.size !== undefined && resume === meta.size) return;
    const headers = this.#headers(meta.location);
    if (resume > 0) headers.set("Range", `bytes=${resume}-`);
    const res = await this.#request(meta.location, { headers });
    if (res.status === 416) {
      await res.body?.cancel();
      await Deno.truncate(incomplete, 0);
      throw new Interrupted("the server refused the resume range; restarting");
    }
    if (res.status !== 200 && res.status !== 206) {
      await res.body?.cancel();
      throw new HubError(
        `${this.label}: ${file}: GET failed with HTTP ${res.status}; try again later`,
      );
    }
    if (res.status === 200 && resume > 0) resume = 0; // the server ignored Range: start over
    const out = await Deno.open(incomplete, { create: true, write: true, truncate: resume === 0 });
    await out.seek(resume, Deno.SeekMode.Start);
    const progress = this.#opts.quiet
      ? undefined
      : new FileProgress(`${this.label} ${file}`, meta.size, resume, this.#opts);
    let ok = false;
    try {
      if (!res.body) throw new Interrupted("empty response");
      const reader = res.body.getReader();
      for (;;) {
        let chunk: ReadableStreamReadResult<Uint8Array>;
        try {
          chunk = await reader.read();
        } catch (e) {
          throw new Interrupted((e as Error).message.split("\n")[0]);
        }
        if (chunk.done) break;
        let off = 0;
        while (off < chunk.value.length) off += await out.write(chunk.value.subarray(off));
        progress?.add(chunk.value.length);
      }
      const size = (await out.stat()).size;
      if (meta.size !== undefined && size < meta.size) {
        throw new Interrupted(`connection closed at ${size} of ${meta.size} bytes`);
      }
      ok = true;
    } finally {
      out.close();
      progress?.end(ok);
    }
  }
}

class Interrupted extends Error {}
