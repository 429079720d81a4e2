/**
 * Security of a run over NATS (README "Security"): what a process presents to the server (TLS,
 * credentials), the refusal of plaintext links off this machine, and the least-privilege
 * permissions of the coordinator and the workers, derived from the run's subjects.
 *
 * Everything a run sends besides the seed and ghat is the private data or derived from it
 * without noise (token ids, activations, per-example losses), so a run leaves loopback only
 * over TLS, and only the coordinator may publish what drives the model and the ledger.
 */
import {
  credsAuthenticator,
  nkeyAuthenticator,
  type NodeConnectionOptions,
} from "@nats-io/transport-node";
import { subjects, useRunKey } from "./protocol.ts";

/** How a process connects to nats-server; every field is optional (an open local server). */
export interface NatsSecurity {
  /** A NATS credentials file (`.creds`: user JWT + nkey seed), e.g. from `nsc`. */
  creds?: string;
  /** A file holding a user nkey seed (`SU...`). */
  nkey?: string;
  user?: string;
  password?: string;
  token?: string;
  /** CA certificate (PEM) that signed the server's certificate; setting it requires TLS. */
  tlsCa?: string;
  /** Client certificate and key (PEM), for servers that verify clients (`verify: true`). */
  tlsCert?: string;
  tlsKey?: string;
  /** Connect without TLS to a server that is not on this machine (private data in clear). */
  allowPlaintext?: boolean;
  /** The run's secret key (hex), with which every message is authenticated. */
  runKey?: string;
}

/** The environment variables through which a launcher hands its children their security. */
const ENV: Record<keyof NatsSecurity, string> = {
  creds: "DPZO_NATS_CREDS",
  nkey: "DPZO_NATS_NKEY",
  user: "DPZO_NATS_USER",
  password: "DPZO_NATS_PASSWORD",
  token: "DPZO_NATS_TOKEN",
  tlsCa: "DPZO_NATS_TLS_CA",
  tlsCert: "DPZO_NATS_TLS_CERT",
  tlsKey: "DPZO_NATS_TLS_KEY",
  allowPlaintext: "DPZO_NATS_ALLOW_PLAINTEXT",
  runKey: "DPZO_RUN_KEY",
};

/** Security from DPZO_NATS_* / DPZO_RUN_KEY (passwords and keys stay off command lines). */
export function securityFromEnv(env: Record<string, string | undefined>): NatsSecurity {
  const s: NatsSecurity = {};
  for (const [k, name] of Object.entries(ENV) as [keyof NatsSecurity, string][]) {
    const v = env[name];
    if (v === undefined || v === "") continue;
    if (k === "allowPlaintext") s.allowPlaintext = v === "1" || v === "true";
    else s[k] = v;
  }
  return s;
}

/**
 * The environment that hands `s` to a child process (the inverse of `securityFromEnv`). With
 * `complete`, variables `s` does not set are set empty, so that none leaks from the parent.
 */
export function securityEnv(s: NatsSecurity, complete = false): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, name] of Object.entries(ENV) as [keyof NatsSecurity, string][]) {
    const v = s[k];
    if (v === undefined || v === false) {
      if (complete) out[name] = "";
      continue;
    }
    out[name] = v === true ? "1" : v;
  }
  return out;
}

/** Flags over environment: a flag that is set wins. */
export function mergeSecurity(env: NatsSecurity, flags: NatsSecurity): NatsSecurity {
  const out: NatsSecurity = { ...env };
  for (const [k, v] of Object.entries(flags) as [keyof NatsSecurity, unknown][]) {
    if (v !== undefined) (out as Record<string, unknown>)[k] = v;
  }
  return out;
}

/** Hosts of a NATS URL list ("nats://a:4222,tls://b:4222"). */
export function urlHosts(url: string): string[] {
  return url.split(",").map((u) => {
    const s = u.trim();
    try {
      return new URL(/^\w+:\/\//.test(s) ? s : `nats://${s}`).hostname.replace(/^\[|\]$/g, "");
    } catch {
      return s;
    }
  });
}

/** Whether every server of a URL list is on this machine. */
export function isLoopbackUrl(url: string): boolean {
  return urlHosts(url).every((h) =>
    h === "localhost" || h === "::1" || /^127\.\d+\.\d+\.\d+$/.test(h)
  );
}

/** Whether the client side asks for TLS (a CA, a client certificate, or tls:// URLs). */
export function wantsTls(url: string, s: NatsSecurity): boolean {
  return !!(s.tlsCa || s.tlsCert) || url.split(",").every((u) => u.trim().startsWith("tls://"));
}

/** Why a configuration is unsafe or incomplete; null when it is fine. */
export function securityProblem(url: string, s: NatsSecurity): string | null {
  if (!!s.tlsCert !== !!s.tlsKey) {
    return "--nats-tls-cert and --nats-tls-key go together (client certificate and its key)";
  }
  if (s.password !== undefined && s.user === undefined) {
    return "a NATS password needs a user (--nats-user or DPZO_NATS_USER)";
  }
  if ([s.creds, s.nkey, s.user, s.token].filter((v) => v !== undefined).length > 1) {
    return "choose one of --nats-creds, --nats-nkey, --nats-user and a token";
  }
  if (!isLoopbackUrl(url) && !wantsTls(url, s) && !s.allowPlaintext) {
    return `refusing to connect to ${url} without TLS: everything a run sends besides the seed ` +
      "and ghat (token ids, activations, per-example losses) is private training data. " +
      "Pass --nats-tls-ca CA.pem (and --nats-tls-cert/--nats-tls-key if the server verifies " +
      "clients), or --nats-allow-plaintext on a network you trust";
  }
  return null;
}

/**
 * The connection options for `s` (TLS files, authenticator). Throws on a configuration that is
 * incomplete or sends private data in clear off this machine; warns through `log` when a
 * plaintext connection leaves loopback because the user allowed it.
 */
export function connectOptions(
  url: string,
  s: NatsSecurity,
  log: (line: string) => void = console.error,
): Partial<NodeConnectionOptions> {
  const problem = securityProblem(url, s);
  if (problem) throw new Error(problem);
  if (!isLoopbackUrl(url) && !wantsTls(url, s)) {
    log(
      `WARNING: NATS connection to ${url} without TLS (--nats-allow-plaintext): training data ` +
        "crosses the network in clear",
    );
  }
  const o: Partial<NodeConnectionOptions> = {};
  if (wantsTls(url, s)) {
    o.tls = {
      ...(s.tlsCa ? { caFile: s.tlsCa } : {}),
      ...(s.tlsCert ? { certFile: s.tlsCert, keyFile: s.tlsKey } : {}),
    };
  }
  if (s.creds) {
    const file = s.creds;
    o.authenticator = credsAuthenticator(readSecret(file, "--nats-creds"));
  } else if (s.nkey) {
    const seed = new TextDecoder().decode(readSecret(s.nkey, "--nats-nkey")).trim();
    o.authenticator = nkeyAuthenticator(new TextEncoder().encode(seed));
  } else if (s.user !== undefined) {
    o.user = s.user;
    o.pass = s.password ?? "";
  } else if (s.token !== undefined) {
    o.token = s.token;
  }
  return o;
}

function readSecret(path: string, flag: string): Uint8Array {
  try {
    return Deno.readFileSync(path);
  } catch (e) {
    throw new Error(`${flag}: cannot read ${path}: ${(e as Error).message}`);
  }
}

/** Installs the run key of `s` (hex) for `run` in this process, if there is one. */
export function installRunKey(run: string, s: NatsSecurity): void {
  if (!s.runKey) return;
  const hex = s.runKey.trim();
  if (!/^([0-9a-fA-F]{2}){16,}$/.test(hex)) {
    throw new Error("DPZO_RUN_KEY: expected at least 32 hex digits");
  }
  useRunKey(run, Uint8Array.from(hex.match(/../g)!.map((b) => parseInt(b, 16))));
}

export function toHex(b: Uint8Array): string {
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
}

// ---------------------------------------------------------------------------------------------
// Permissions
// ---------------------------------------------------------------------------------------------

export interface Permissions {
  publish: string[];
  subscribe: string[];
  /** May answer requests it received (once each), without any other `_INBOX` publish. */
  allowResponses?: boolean;
}

/** JetStream API subjects that only read a stream (its info, messages, a reading consumer). */
function readStreamApi(stream: string): string[] {
  return [
    `$JS.API.STREAM.INFO.${stream}`,
    `$JS.API.STREAM.MSG.GET.${stream}`,
    `$JS.API.DIRECT.GET.${stream}`,
    `$JS.API.DIRECT.GET.${stream}.>`,
    `$JS.API.CONSUMER.CREATE.${stream}`,
    `$JS.API.CONSUMER.CREATE.${stream}.>`,
    `$JS.API.CONSUMER.INFO.${stream}.*`,
    `$JS.API.CONSUMER.DELETE.${stream}.*`,
    `$JS.API.CONSUMER.MSG.NEXT.${stream}.*`,
    `$JS.ACK.${stream}.>`,
    `$JS.FC.${stream}.>`,
  ];
}

/**
 * The run's JetStream streams: the metadata stream `dpzo-<run>`, the ledger `dpzo-<run>-ledger`
 * (cluster/ledger_stream.ts), and any other `subjects(run)` value named `dpzo-<run>...`.
 */
export function runStreams(run: string): string[] {
  const S = subjects(run);
  const named = Object.values(S).filter((v): v is string =>
    typeof v === "string" && v.startsWith(`dpzo-${run}`)
  );
  return [...new Set([S.stream, `${S.stream}-ledger`, ...named])];
}

/**
 * Least privilege for one run (DESIGN "The step over NATS"). The coordinator publishes control
 * (step.begin/flip/update/abort), queries, shutdown, batches into stage 0 and everything
 * JetStream (the run's metadata and ledger). A worker publishes only its own kinds of messages
 * — hello, ready, heartbeat, activations into stages 1..K-1, results — answers the requests it
 * received (acks, digests, stats: `allow_responses`), and may only read the run's streams.
 * So a worker's credentials cannot release a step, change an update, or write a ledger entry.
 */
export function runPermissions(
  run: string,
  shape: { stages: number; groups: number },
): { coordinator: Permissions; worker: Permissions } {
  const S = subjects(run);
  const p = `dpzo.${run}`;
  const downstream: string[] = [];
  for (let g = 0; g < shape.groups; g++) {
    for (let k = 1; k < shape.stages; k++) downstream.push(S.forward(g, k));
  }
  return {
    coordinator: {
      publish: [`${p}.>`, "$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "_INBOX.>"],
      subscribe: [`${p}.>`, "_INBOX.>"],
    },
    worker: {
      publish: [
        S.hello,
        S.ready,
        S.heartbeat,
        S.result,
        ...downstream,
        "$JS.API.INFO",
        ...runStreams(run).flatMap(readStreamApi),
      ],
      // Workers see the run's traffic anyway (token ids, activations): reading is not limited.
      subscribe: [`${p}.>`, "_INBOX.>"],
      allowResponses: true,
    },
  };
}

export interface ServerUser {
  user: string;
  password: string;
  permissions?: Permissions;
}

/** A random password (URL-safe, 128 bits). */
export function randomSecret(): string {
  return toHex(crypto.getRandomValues(new Uint8Array(16)));
}

/**
 * The throw-away users of a local run (`dpzo launch` without `--nats`): a coordinator and a
 * worker user with random passwords and the run's permissions.
 */
export function localUsers(
  run: string,
  shape: { stages: number; groups: number },
): { coordinator: ServerUser; worker: ServerUser } {
  const perms = runPermissions(run, shape);
  return {
    coordinator: { user: "coordinator", password: randomSecret(), permissions: perms.coordinator },
    worker: { user: "worker", password: randomSecret(), permissions: perms.worker },
  };
}

const q = (s: string) => JSON.stringify(s);

/** The `authorization { users: [...] }` block of a nats-server configuration. */
export function authorizationBlock(users: ServerUser[]): string {
  const lines = ["authorization {", "  users: ["];
  for (const u of users) {
    lines.push(`    { user: ${q(u.user)}, password: ${q(u.password)}`);
    if (u.permissions) {
      const { publish, subscribe, allowResponses } = u.permissions;
      lines.push("      permissions: {");
      lines.push(`        publish: { allow: [${publish.map(q).join(", ")}] }`);
      lines.push(`        subscribe: { allow: [${subscribe.map(q).join(", ")}] }`);
      if (allowResponses) lines.push("        allow_responses: true");
      lines.push("      }");
    }
    lines.push("    }");
  }
  lines.push("  ]", "}");
  return lines.join("\n");
}
