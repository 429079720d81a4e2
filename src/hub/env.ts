/**
 * The Hugging Face Hub settings, read from the environment exactly as Python's `huggingface_hub`
 * reads them, so both tools share one cache and one login:
 *
 *   HF_HUB_CACHE > HUGGINGFACE_HUB_CACHE > $HF_HOME/hub > $XDG_CACHE_HOME/huggingface/hub
 *     > ~/.cache/huggingface/hub                                   (the cache)
 *   HF_ENDPOINT (default https://huggingface.co)                   (where files come from)
 *   HF_TOKEN > HUGGING_FACE_HUB_TOKEN > HF_TOKEN_PATH or $HF_HOME/token   (the token)
 *   HF_HUB_OFFLINE=1|true|yes|on                                   (never touch the network)
 */
import { z } from "zod";
import { formatZodError, UsageError } from "../validation.ts";

export interface HubSettings {
  /** The hub cache: `models--owner--name/` folders live here. */
  cache: string;
  /** No trailing slash. */
  endpoint: string;
  token: string | undefined;
  offline: boolean;
  /** Where the token was found (for messages), never the token itself. */
  tokenSource: string | undefined;
}

type Env = Record<string, string | undefined>;

const TRUE = new Set(["1", "on", "yes", "true"]);

const Endpoint = z.url({ protocol: /^https?$/, error: "expected an http(s) URL" });

function expandUser(path: string, home: string | undefined): string {
  if (path === "~" || path.startsWith("~/")) {
    if (!home) throw new UsageError(`${path}: cannot expand ~ because HOME is not set`);
    return home + path.slice(1);
  }
  return path;
}

function readTokenFile(path: string): string | undefined {
  try {
    const t = Deno.readTextFileSync(path).trim();
    return t === "" ? undefined : t;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw new UsageError(
      `${path}: the Hugging Face token file cannot be read (${(e as Error).message}); ` +
        `fix its permissions or set HF_TOKEN`,
    );
  }
}

/** The settings from an environment (default: the process's). */
export function hubSettings(env: Env = Deno.env.toObject()): HubSettings {
  const get = (k: string) => {
    const v = env[k];
    return v === undefined || v === "" ? undefined : v;
  };
  const home = get("HOME") ?? get("USERPROFILE");
  const xdg = get("XDG_CACHE_HOME") ?? (home ? `${home}/.cache` : undefined);
  const hfHomeRaw = get("HF_HOME") ?? (xdg ? `${xdg}/huggingface` : undefined);
  const cacheRaw = get("HF_HUB_CACHE") ?? get("HUGGINGFACE_HUB_CACHE") ??
    (hfHomeRaw ? `${hfHomeRaw}/hub` : undefined);
  if (!cacheRaw || !hfHomeRaw) {
    throw new UsageError(
      "HF_HOME: not set and HOME is unknown; set HF_HOME (or HF_HUB_CACHE) to a writable directory",
    );
  }
  const hfHome = expandUser(hfHomeRaw, home);
  const cache = expandUser(cacheRaw, home).replace(/\/+$/, "");

  const endpointRaw = (get("HF_ENDPOINT") ?? "https://huggingface.co").replace(/\/+$/, "");
  const ep = Endpoint.safeParse(endpointRaw);
  if (!ep.success) {
    throw new UsageError(
      `HF_ENDPOINT: ${formatZodError(ep.error)}, got ${JSON.stringify(endpointRaw)}; ` +
        `unset it for the public Hub or set e.g. https://hf-mirror.example.org`,
    );
  }

  let token = get("HF_TOKEN"), tokenSource: string | undefined = token ? "HF_TOKEN" : undefined;
  if (!token && get("HUGGING_FACE_HUB_TOKEN")) {
    token = get("HUGGING_FACE_HUB_TOKEN");
    tokenSource = "HUGGING_FACE_HUB_TOKEN";
  }
  if (!token) {
    const path = expandUser(get("HF_TOKEN_PATH") ?? `${hfHome}/token`, home);
    token = readTokenFile(path);
    if (token) tokenSource = path;
  }
  const offline = TRUE.has((get("HF_HUB_OFFLINE") ?? "").toLowerCase());
  return { cache, endpoint: endpointRaw, token, offline, tokenSource };
}
