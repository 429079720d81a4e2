/**
 * The Hub client against a loopback server that serves the fixtures in the Hub's URL layout
 * (`/{repo}/resolve/{revision}/{file}`, LFS files redirected to a CDN path with X-Linked-Etag /
 * X-Linked-Size), through HF_ENDPOINT semantics and a temporary HF_HOME.
 */
import { strict as assert } from "node:assert";
import { createHash } from "node:crypto";
import { FIXTURES, missing } from "./fixtures.ts";
import { type HubSettings, hubSettings } from "../src/hub/env.ts";
import { parseModelRef, resolveModel, resolveModelConfig } from "../src/hub/model.ts";
import { resolveTaskData } from "../src/hub/dataset.ts";
import { resolveRunInputs } from "../src/hub/mod.ts";
import { parquetReadObjects } from "hyparquet";
import { parquetWriteBuffer } from "hyparquet-writer";
import { openCheckpoint } from "../src/model/checkpoint.ts";
import { readSafetensorsHeader, readTensor, writeSafetensors } from "../src/model/safetensors.ts";
import { openResolvedCheckpoint } from "../src/hub/checkpoint.ts";
import { loadTokenizer } from "../src/tokenizer/mod.ts";

const TINY = `${FIXTURES}/tiny-opt`;
const COMMIT = "0123456789abcdef0123456789abcdef01234567";
const MODEL_FILES = [
  "config.json",
  "generation_config.json",
  "merges.txt",
  "model.safetensors",
  "special_tokens_map.json",
  "tokenizer_config.json",
  "vocab.json",
];

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const gitSha1 = (b: Uint8Array) =>
  createHash("sha1").update(`blob ${b.length}\0`).update(b).digest("hex");
const isLfs = (name: string) => /\.(safetensors|parquet)$/.test(name);
const etagOf = (name: string, b: Uint8Array) => (isLfs(name) ? sha256(b) : gitSha1(b));

interface Repo {
  commit: string;
  files: Map<string, Uint8Array<ArrayBuffer>>;
}

interface Served {
  method: string;
  path: string;
  range: string | null;
  auth: string | null;
}

/** A loopback Hub: repos keyed `model:owner/name` or `dataset:owner/name`. */
class FakeHub {
  requests: Served[] = [];
  /** The next CDN GET of a file sends only this many bytes, then breaks the connection. */
  cutNext: number | undefined;
  /** CDN answers with these bytes instead of the real content (a corrupted transfer). */
  corrupt = false;
  server: Deno.HttpServer<Deno.NetAddr>;
  /** The CDN is another origin, as on the real Hub (the token must not go there). */
  cdnServer: Deno.HttpServer<Deno.NetAddr>;
  endpoint: string;
  cdnOrigin: string;
  cdn = new Map<string, Uint8Array<ArrayBuffer>>();

  constructor(public repos: Map<string, Repo>) {
    for (const repo of repos.values()) {
      for (const [name, b] of repo.files) if (isLfs(name)) this.cdn.set(sha256(b), b);
    }
    this.server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen: () => {} },
      (req) => this.handle(req),
    );
    this.endpoint = `http://127.0.0.1:${this.server.addr.port}`;
    this.cdnServer = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen: () => {} },
      (req) => this.handle(req),
    );
    this.cdnOrigin = `http://127.0.0.1:${this.cdnServer.addr.port}`;
  }

  handle(req: Request): Response {
    const url = new URL(req.url);
    this.requests.push({
      method: req.method,
      path: url.pathname,
      range: req.headers.get("Range"),
      auth: req.headers.get("Authorization"),
    });
    const parts = url.pathname.split("/").slice(1);
    if (parts[0] === "cdn") return this.cdnGet(req, parts[1]);
    const type = parts[0] === "datasets" ? "dataset" : "model";
    if (type === "dataset") parts.shift();
    const [owner, name, resolve, rev, ...path] = parts;
    const repo = this.repos.get(`${type}:${owner}/${name}`);
    if (resolve !== "resolve" || !repo) {
      return new Response("Repository not found", {
        status: 401,
        headers: { "X-Error-Code": "RepoNotFound" },
      });
    }
    const revision = decodeURIComponent(rev);
    if (revision !== "main" && revision !== repo.commit) {
      return new Response("Invalid rev id", {
        status: 404,
        headers: { "X-Error-Code": "RevisionNotFound" },
      });
    }
    const file = path.map(decodeURIComponent).join("/");
    const body = repo.files.get(file);
    const common = { "X-Repo-Commit": repo.commit };
    if (!body) {
      return new Response("Entry not found", {
        status: 404,
        headers: { ...common, "X-Error-Code": "EntryNotFound" },
      });
    }
    if (isLfs(file)) {
      const sha = sha256(body);
      return new Response(null, {
        status: 302,
        headers: {
          ...common,
          Location: `${this.cdnOrigin}/cdn/${sha}`,
          ETag: `"${gitSha1(new TextEncoder().encode(`pointer ${sha}`))}"`,
          "X-Linked-Etag": `"${sha}"`,
          "X-Linked-Size": String(body.length),
        },
      });
    }
    return new Response(req.method === "HEAD" ? null : body, {
      headers: { ...common, ETag: `"${gitSha1(body)}"`, "Content-Length": String(body.length) },
    });
  }

  cdnGet(req: Request, sha: string): Response {
    let body = this.cdn.get(sha);
    if (!body) return new Response("not found", { status: 404 });
    if (this.corrupt) {
      body = body.slice();
      body[body.length >> 1] ^= 0xff;
    }
    let start = 0;
    const range = req.headers.get("Range");
    if (range) start = Number(/^bytes=(\d+)-$/.exec(range)![1]);
    const part = body.slice(start);
    const headers: Record<string, string> = {
      "Content-Length": String(part.length),
      ETag: `"${sha}"`,
    };
    if (range) headers["Content-Range"] = `bytes ${start}-${body.length - 1}/${body.length}`;
    const cut = this.cutNext;
    this.cutNext = undefined;
    if (cut === undefined) return new Response(part, { status: range ? 206 : 200, headers });
    const stream = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(part.slice(0, cut));
        // Closing short of Content-Length: the client sees the connection end early.
        setTimeout(() => c.close(), 20);
      },
    });
    return new Response(stream, { status: range ? 206 : 200, headers });
  }

  count(): number {
    return this.requests.length;
  }

  async close(): Promise<void> {
    await this.server.shutdown();
    await this.cdnServer.shutdown();
  }
}

function fixtureRepo(dir: string, names: string[], commit = COMMIT): Repo {
  return {
    commit,
    files: new Map(names.map((n) => [n, Deno.readFileSync(`${dir}/${n}`)])),
  };
}

function settingsFor(home: string, endpoint: string, extra: Record<string, string> = {}) {
  return hubSettings({ HOME: "/nonexistent", HF_HOME: home, HF_ENDPOINT: endpoint, ...extra });
}

const quiet = { quiet: true };

async function withHub(
  fn: (hub: FakeHub, home: string) => Promise<void>,
  repos?: Map<string, Repo>,
): Promise<void> {
  const hub = new FakeHub(
    repos ?? new Map([["model:facebook/opt-125m", fixtureRepo(TINY, MODEL_FILES)]]),
  );
  const home = await Deno.makeTempDir({ prefix: "dpzo-hf-home-" });
  try {
    await fn(hub, home);
  } finally {
    await hub.close();
    await Deno.remove(home, { recursive: true });
  }
}

const skip = missing(TINY);

Deno.test({
  name: "hub: first run downloads into the standard layout, second run makes no request",
  ignore: skip,
  fn: () =>
    withHub(async (hub, home) => {
      const s = settingsFor(home, hub.endpoint, { HF_TOKEN: "hf_test" });
      const r = await resolveModel("facebook/opt-125m", { settings: s, ...quiet });
      const repo = `${home}/hub/models--facebook--opt-125m`;
      assert.equal(r.dir, `${repo}/snapshots/${COMMIT}`);
      assert.deepEqual(r.hub, { id: "facebook/opt-125m", revision: "main", commit: COMMIT });
      assert.equal(Deno.readTextFileSync(`${repo}/refs/main`), COMMIT);
      for (const f of ["config.json", "model.safetensors", "vocab.json", "merges.txt"]) {
        const bytes = Deno.readFileSync(`${TINY}/${f}`);
        assert.equal(
          Deno.readLinkSync(`${r.dir}/${f}`),
          `../../blobs/${etagOf(f, bytes)}`,
          `${f} is a relative link to its blob`,
        );
        assert.deepEqual(Deno.readFileSync(`${repo}/blobs/${etagOf(f, bytes)}`), bytes);
      }
      // Only what dpzo reads: no generation_config.json; absent files recorded as Python does.
      assert.ok(!hub.requests.some((q) => q.path.endsWith("generation_config.json")));
      assert.ok(
        [...Deno.readDirSync(`${repo}/blobs`)].every((e) => !e.name.endsWith(".incomplete")),
      );
      // The token goes to the Hub, not to the CDN.
      assert.ok(
        hub.requests.filter((q) => q.path.includes("/resolve/")).every((q) =>
          q.auth === "Bearer hf_test"
        ),
      );
      assert.ok(
        hub.requests.filter((q) => q.path.startsWith("/cdn/")).every((q) => q.auth === null),
      );
      // The snapshot is a checkpoint directory.
      const ckpt = await openCheckpoint(r.dir);
      assert.equal(ckpt.config.numLayers, 2);
      const tok = await loadTokenizer(r.dir);
      assert.ok(tok.encode("Hello world").length > 1);

      const before = hub.count();
      const again = await resolveModel("facebook/opt-125m@main", { settings: s, ...quiet });
      assert.equal(again.dir, r.dir);
      assert.equal(hub.count(), before, "the second run uses the cache without requests");
      const pinned = await resolveModel(`facebook/opt-125m@${COMMIT}`, { settings: s, ...quiet });
      assert.equal(pinned.dir, r.dir);
      assert.equal(hub.count(), before);
    }),
});

Deno.test({
  name: "hub: resolveModelConfig fetches config.json alone (dpzo plan reads no weights)",
  ignore: skip,
  fn: () =>
    withHub(async (hub, home) => {
      const s = settingsFor(home, hub.endpoint);
      const path = await resolveModelConfig("facebook/opt-125m", { settings: s, ...quiet });
      assert.equal(path, `${home}/hub/models--facebook--opt-125m/snapshots/${COMMIT}/config.json`);
      assert.deepEqual(Deno.readFileSync(path), Deno.readFileSync(`${TINY}/config.json`));
      const files = hub.requests.map((q) => q.path.split("/").pop());
      assert.deepEqual([...new Set(files)], ["config.json"], "no other file was asked for");
      // A local directory and a config file are read where they are.
      assert.equal(await resolveModelConfig(TINY), `${TINY}/config.json`);
      assert.equal(await resolveModelConfig(`${TINY}/config.json`), `${TINY}/config.json`);
    }),
});

Deno.test({
  name: "hub: HF_HUB_OFFLINE=1 works from the cache and fails clearly without it",
  ignore: skip,
  fn: () =>
    withHub(async (hub, home) => {
      const offline = settingsFor(home, hub.endpoint, { HF_HUB_OFFLINE: "1" });
      assert.ok(offline.offline);
      await assert.rejects(
        () => resolveModel("facebook/opt-125m", { settings: offline, ...quiet }),
        /HF_HUB_OFFLINE=1: facebook\/opt-125m@main: config\.json is not in the cache .*unset HF_HUB_OFFLINE/,
      );
      assert.equal(hub.count(), 0, "offline never touches the network");
      await resolveModel("facebook/opt-125m", {
        settings: settingsFor(home, hub.endpoint),
        ...quiet,
      });
      const n = hub.count();
      const r = await resolveModel("facebook/opt-125m", { settings: offline, ...quiet });
      assert.equal(hub.count(), n);
      assert.ok((await openCheckpoint(r.dir)).tensors.size > 0);
      // A revision never fetched is missing, with the ref named.
      await assert.rejects(
        () => resolveModel("facebook/opt-125m@v2", { settings: offline, ...quiet }),
        /refs\/v2 is missing/,
      );
    }),
});

Deno.test({
  name: "hub: an interrupted download resumes with a Range request",
  ignore: skip,
  fn: () =>
    withHub(async (hub, home) => {
      const s = settingsFor(home, hub.endpoint);
      const bytes = Deno.readFileSync(`${TINY}/model.safetensors`);
      const sha = sha256(bytes);
      // Within one run: the connection breaks after 1 MiB, the client resumes.
      hub.cutNext = 1 << 20;
      const lines: string[] = [];
      const r = await resolveModel("facebook/opt-125m", {
        settings: s,
        log: (l) => lines.push(l),
        tty: false,
      });
      const gets = hub.requests.filter((q) => q.path === `/cdn/${sha}`);
      assert.equal(gets.length, 2);
      assert.equal(gets[0].range, null);
      assert.equal(gets[1].range, `bytes=${1 << 20}-`);
      assert.deepEqual(Deno.readFileSync(`${r.dir}/model.safetensors`), bytes);
      assert.ok(lines.some((l) => l.includes("resuming")), lines.join("\n"));
      assert.ok(lines.some((l) => /downloaded facebook\/opt-125m@main model\.safetensors/.test(l)));

      // Across runs: a partial blob left by an earlier process (or by Python) is continued.
      const home2 = await Deno.makeTempDir({ prefix: "dpzo-hf-home-" });
      try {
        const blobs = `${home2}/hub/models--facebook--opt-125m/blobs`;
        Deno.mkdirSync(blobs, { recursive: true });
        Deno.writeFileSync(`${blobs}/${sha}.incomplete`, bytes.subarray(0, 12345));
        hub.requests = [];
        const r2 = await resolveModel("facebook/opt-125m", {
          settings: settingsFor(home2, hub.endpoint),
          ...quiet,
        });
        const gets2 = hub.requests.filter((q) => q.path === `/cdn/${sha}`);
        assert.deepEqual(gets2.map((q) => q.range), ["bytes=12345-"]);
        assert.deepEqual(Deno.readFileSync(`${r2.dir}/model.safetensors`), bytes);
      } finally {
        await Deno.remove(home2, { recursive: true });
      }
    }),
});

Deno.test({
  name: "hub: a corrupted blob is detected, in transfer and in the cache",
  ignore: skip,
  fn: () =>
    withHub(async (hub, home) => {
      const s = settingsFor(home, hub.endpoint);
      const bytes = Deno.readFileSync(`${TINY}/model.safetensors`);
      const sha = sha256(bytes);
      const blob = `${home}/hub/models--facebook--opt-125m/blobs/${sha}`;
      hub.corrupt = true;
      await assert.rejects(
        () => resolveModel("facebook/opt-125m", { settings: s, ...quiet }),
        /model\.safetensors: the downloaded content does not match its etag/,
      );
      assert.throws(() => Deno.statSync(blob));
      assert.throws(() => Deno.statSync(`${blob}.incomplete`));
      hub.corrupt = false;
      const r = await resolveModel("facebook/opt-125m", { settings: s, ...quiet });

      // Flip one byte of the cached blob: offline refuses it, online fetches it again.
      const bad = bytes.slice();
      bad[1000] ^= 1;
      Deno.writeFileSync(blob, bad);
      const offline = settingsFor(home, hub.endpoint, { HF_HUB_OFFLINE: "1" });
      await assert.rejects(
        () => resolveModel("facebook/opt-125m", { settings: offline, ...quiet }),
        /blobs\/[0-9a-f]{64}: corrupted .*model\.safetensors/,
      );
      hub.requests = [];
      await resolveModel("facebook/opt-125m", { settings: s, ...quiet });
      assert.equal(hub.requests.filter((q) => q.path === `/cdn/${sha}`).length, 1);
      assert.deepEqual(Deno.readFileSync(`${r.dir}/model.safetensors`), bytes);
    }),
});

/** Lays out a cache the way Python's huggingface_hub does (relative links into blobs/). */
function pythonCache(cache: string, id: string, dir: string, names: string[], commit: string) {
  const repo = `${cache}/models--${id.replace("/", "--")}`;
  Deno.mkdirSync(`${repo}/blobs`, { recursive: true });
  Deno.mkdirSync(`${repo}/refs`, { recursive: true });
  Deno.mkdirSync(`${repo}/snapshots/${commit}`, { recursive: true });
  Deno.writeTextFileSync(`${repo}/refs/main`, commit);
  for (const n of names) {
    const b = Deno.readFileSync(`${dir}/${n}`);
    const etag = etagOf(n, b);
    Deno.writeFileSync(`${repo}/blobs/${etag}`, b);
    Deno.symlinkSync(`../../blobs/${etag}`, `${repo}/snapshots/${commit}/${n}`);
  }
  Deno.mkdirSync(`${cache}/.locks/models--${id.replace("/", "--")}`, { recursive: true });
}

Deno.test({
  name: "hub: a cache laid out by Python's huggingface_hub is found and used (HF_HUB_CACHE)",
  ignore: skip,
  fn: () =>
    withHub(async (hub, home) => {
      const cache = `${home}/python-cache`;
      const commit = "fedcba9876543210fedcba9876543210fedcba98";
      pythonCache(cache, "facebook/opt-125m", TINY, MODEL_FILES, commit);
      const s = settingsFor(home, hub.endpoint, { HF_HUB_CACHE: cache });
      assert.equal(s.cache, cache);
      const r = await resolveModel("facebook/opt-125m", { settings: s, ...quiet });
      assert.equal(r.dir, `${cache}/models--facebook--opt-125m/snapshots/${commit}`);
      assert.equal(hub.count(), 0, "no request: everything dpzo reads is in the cache");
      const offline = await resolveModel("facebook/opt-125m", {
        settings: { ...s, offline: true },
        ...quiet,
      });
      assert.equal(offline.dir, r.dir);
      assert.equal((await openCheckpoint(r.dir)).config.numLayers, 2);
    }),
});

Deno.test("hub: settings follow huggingface_hub's variables and precedence", () => {
  const home = "/home/u";
  let s: HubSettings = hubSettings({ HOME: home });
  assert.equal(s.cache, "/home/u/.cache/huggingface/hub");
  assert.equal(s.endpoint, "https://huggingface.co");
  assert.equal(s.offline, false);
  s = hubSettings({ HOME: home, XDG_CACHE_HOME: "/x" });
  assert.equal(s.cache, "/x/huggingface/hub");
  s = hubSettings({ HOME: home, XDG_CACHE_HOME: "/x", HF_HOME: "~/hf" });
  assert.equal(s.cache, "/home/u/hf/hub");
  s = hubSettings({ HOME: home, HF_HOME: "/h", HUGGINGFACE_HUB_CACHE: "/old" });
  assert.equal(s.cache, "/old");
  s = hubSettings({
    HOME: home,
    HF_HOME: "/h",
    HUGGINGFACE_HUB_CACHE: "/old",
    HF_HUB_CACHE: "/new/",
  });
  assert.equal(s.cache, "/new");
  for (const v of ["1", "true", "YES", "on"]) {
    assert.ok(hubSettings({ HOME: home, HF_HUB_OFFLINE: v }).offline, v);
  }
  assert.ok(!hubSettings({ HOME: home, HF_HUB_OFFLINE: "0" }).offline);
  assert.equal(
    hubSettings({ HOME: home, HF_ENDPOINT: "http://mirror:8080/" }).endpoint,
    "http://mirror:8080",
  );
  assert.throws(
    () => hubSettings({ HOME: home, HF_ENDPOINT: "mirror" }),
    /^UsageError: HF_ENDPOINT: /,
  );

  const dir = Deno.makeTempDirSync();
  try {
    Deno.writeTextFileSync(`${dir}/token`, "hf_file\n");
    s = hubSettings({ HOME: home, HF_HOME: dir });
    assert.equal(s.token, "hf_file");
    assert.equal(s.tokenSource, `${dir}/token`);
    assert.equal(hubSettings({ HOME: home, HF_HOME: dir, HF_TOKEN: "hf_env" }).token, "hf_env");
    assert.equal(hubSettings({ HOME: home, HF_HOME: "/none" }).token, undefined);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("hub: --model is a local directory or a Hub id with an optional revision", async () => {
  assert.deepEqual(await parseModelRef("facebook/opt-125m"), {
    kind: "hub",
    id: "facebook/opt-125m",
    revision: "main",
  });
  assert.deepEqual(await parseModelRef("facebook/opt-125m@refs/pr/3"), {
    kind: "hub",
    id: "facebook/opt-125m",
    revision: "refs/pr/3",
  });
  assert.deepEqual(await parseModelRef("src"), { kind: "local", dir: "src" });
  for (const bad of ["./nope", "/abs/nope", "a/b/c", "facebook/opt-125m@", "a--b/c", "x/y@../z"]) {
    await assert.rejects(
      () => parseModelRef(bad),
      /--model: .* is not a directory, nor a Hub model id/,
      bad,
    );
  }
});

Deno.test({
  name: "hub: clear errors for an unknown repo and a repo without safetensors",
  ignore: skip,
  fn: () =>
    withHub(
      async (hub, home) => {
        const s = settingsFor(home, hub.endpoint);
        await assert.rejects(
          () => resolveModel("facebook/opt-nope", { settings: s, ...quiet }),
          /facebook\/opt-nope@main: .* has no model facebook\/opt-nope that you can read \(HTTP 401 RepoNotFound\).*set HF_TOKEN/,
        );
        await assert.rejects(
          () => resolveModel("facebook/opt-125m@v9", { settings: s, ...quiet }),
          /the Hub has no revision v9/,
        );
        await assert.rejects(
          () => resolveModel("facebook/bin-only", { settings: s, ...quiet }),
          /facebook\/bin-only@main: the repository has no model\.safetensors .*safe_serialization=True/,
        );
      },
      new Map([
        ["model:facebook/opt-125m", fixtureRepo(TINY, MODEL_FILES)],
        ["model:facebook/bin-only", fixtureRepo(TINY, ["config.json", "vocab.json", "merges.txt"])],
      ]),
    ),
});

function sst2Parquet(sentences: string[], labels: number[]): Uint8Array<ArrayBuffer> {
  const buf = parquetWriteBuffer({
    columnData: [
      { name: "sentence", data: sentences, type: "STRING" },
      { name: "label", data: labels, type: "INT32" },
      { name: "idx", data: labels.map((_, i) => i), type: "INT32" },
    ],
  });
  return new Uint8Array(buf);
}

Deno.test("hub: a task's dataset by name fetches its parquet files through the cache", async () => {
  const train = sst2Parquet(["a fine film", "dull"], [1, 0]);
  const validation = sst2Parquet(["great"], [1]);
  const glue: Repo = {
    commit: "abcabcabcabcabcabcabcabcabcabcabcabcabca",
    files: new Map([
      ["sst2/train-00000-of-00001.parquet", train],
      ["sst2/validation-00000-of-00001.parquet", validation],
      ["sst2/test-00000-of-00001.parquet", validation],
    ]),
  };
  await withHub(async (hub, home) => {
    const s = settingsFor(home, hub.endpoint);
    const dir = await resolveTaskData("sst2", "nyu-mll/glue", { settings: s, ...quiet });
    assert.equal(dir, `${home}/hub/datasets--nyu-mll--glue/snapshots/${glue.commit}/sst2`);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), [
      "train-00000-of-00001.parquet",
      "validation-00000-of-00001.parquet",
    ]);
    assert.ok(hub.requests.every((q) => !q.path.includes("test-")));
    assert.ok(hub.requests.some((q) => q.path.startsWith("/datasets/nyu-mll/glue/resolve/main/")));
    const rows = await parquetReadObjects({
      file: Deno.readFileSync(`${dir}/train-00000-of-00001.parquet`).buffer,
    });
    assert.deepEqual(rows.map((r) => r.sentence), ["a fine film", "dull"]);
    const n = hub.count();
    const offline = { ...s, offline: true };
    assert.equal(
      await resolveTaskData("sst2", "nyu-mll/glue", { settings: offline, ...quiet }),
      dir,
    );
    assert.equal(hub.count(), n);
    // Local paths keep working; unknown names fail in one line.
    assert.equal(await resolveTaskData("sst2", "test", { settings: s, ...quiet }), "test");
    await assert.rejects(
      () => resolveTaskData("sst2", "someone/else", { settings: s, ...quiet }),
      /task\.data: someone\/else: dpzo knows the sst2 files of nyu-mll\/glue, stanfordnlp\/sst2/,
    );
    await assert.rejects(
      () => resolveTaskData("sst2", "./missing/dir", { settings: s, ...quiet }),
      /task\.data: \.\/missing\/dir is not a file or directory/,
    );
  }, new Map([["dataset:nyu-mll/glue", glue]]));
});

Deno.test({
  name: "hub: resolveRunInputs makes a run config's model and data local",
  ignore: skip,
  fn: () =>
    withHub(async (hub, home) => {
      const env = { HF_HOME: home, HF_ENDPOINT: hub.endpoint, HF_HUB_OFFLINE: "" };
      const saved = Object.fromEntries(Object.keys(env).map((k) => [k, Deno.env.get(k)]));
      for (const [k, v] of Object.entries(env)) Deno.env.set(k, v);
      try {
        const config = { model: "facebook/opt-125m", task: { name: "sst2", data: TINY } };
        const r = await resolveRunInputs(config, quiet);
        assert.equal(r.model, `${home}/hub/models--facebook--opt-125m/snapshots/${COMMIT}`);
        assert.equal(r.task.data, TINY);
        assert.equal(await resolveRunInputs(r, quiet), r, "a resolved config is returned as is");
      } finally {
        for (const [k, v] of Object.entries(saved)) {
          if (v === undefined) Deno.env.delete(k);
          else Deno.env.set(k, v);
        }
      }
    }),
});

Deno.test({
  name: "hub: a pipeline stage fetches only the shards that hold its tensors",
  ignore: skip,
  fn: async () => {
    const tmp = await Deno.makeTempDir({ prefix: "dpzo-shards-" });
    try {
      // tiny-opt split in two shards: layer 1 in the second, everything else in the first.
      const header = await readSafetensorsHeader(`${TINY}/model.safetensors`);
      const all = await Promise.all(
        [...header.tensors].map(async ([name, entry]) => ({
          name,
          shape: entry.shape,
          data: await readTensor(`${TINY}/model.safetensors`, entry),
        })),
      );
      const second = (n: string) => n.includes(".layers.1.");
      const shardName = (n: string) =>
        second(n) ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
      await writeSafetensors(
        `${tmp}/model-00001-of-00002.safetensors`,
        all.filter((t) => !second(t.name)),
      );
      await writeSafetensors(
        `${tmp}/model-00002-of-00002.safetensors`,
        all.filter((t) => second(t.name)),
      );
      const index = {
        metadata: {},
        weight_map: Object.fromEntries(all.map((t) => [t.name, shardName(t.name)])),
      };
      await Deno.writeTextFile(`${tmp}/model.safetensors.index.json`, JSON.stringify(index));
      const names = MODEL_FILES.filter((f) => f !== "model.safetensors");
      for (const f of names) await Deno.copyFile(`${TINY}/${f}`, `${tmp}/${f}`);
      const files = [
        ...names,
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
      ];
      await withHub(async (hub, home) => {
        const s = settingsFor(home, hub.endpoint);
        const r = await resolveModel("facebook/opt-sharded", {
          settings: s,
          tensors: (n) => !n.includes(".layers.1."),
          ...quiet,
        });
        assert.deepEqual(r.weightFiles, [`${r.dir}/model-00001-of-00002.safetensors`]);
        assert.throws(() => Deno.statSync(`${r.dir}/model-00002-of-00002.safetensors`));
        const ckpt = await openResolvedCheckpoint(r);
        assert.ok(ckpt.tensors.has("model.decoder.layers.0.fc1.weight"));
        assert.ok(!ckpt.tensors.has("model.decoder.layers.1.fc1.weight"));
        const whole = await resolveModel("facebook/opt-sharded", { settings: s, ...quiet });
        assert.equal(whole.weightFiles!.length, 2);
        assert.equal((await openCheckpoint(whole.dir)).tensors.size, header.tensors.size);
      }, new Map([["model:facebook/opt-sharded", fixtureRepo(tmp, files)]]));
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});
