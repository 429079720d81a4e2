/**
 * Starts a local `nats-server` (JetStream on, store in a given directory) on a free port, for
 * `dpzo launch` without `--nats` and for the tests. The caller stops it with `stop()`. With
 * `tls` and `users` the generated configuration (mode 0600, in the store directory) requires TLS
 * and a password, and gives each user its permissions (cluster/nats_security.ts).
 */
import { authorizationBlock, type ServerUser } from "./nats_security.ts";

export interface ServerTls {
  /** Server certificate and key (PEM). */
  cert: string;
  key: string;
  /** CA that signed client certificates (with `verify`). */
  ca?: string;
  /** Require a client certificate signed by `ca`. */
  verify?: boolean;
}

export interface NatsServer {
  url: string;
  port: number;
  process: Deno.ChildProcess;
  /** Settles when the server process ends (stopped, crashed or killed). */
  status: Promise<Deno.CommandStatus>;
  stop(): Promise<void>;
}

/** A port nobody listens on right now (the OS picks it). */
export function freePort(hostname = "127.0.0.1"): number {
  const l = Deno.listen({ hostname, port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

async function canConnect(hostname: string, port: number): Promise<boolean> {
  try {
    const c = await Deno.connect({ hostname, port });
    c.close();
    return true;
  } catch {
    return false;
  }
}

export async function startNatsServer(opts: {
  storeDir: string;
  host?: string;
  port?: number;
  /** Where the server's log lines go (default: dropped). */
  log?: (line: string) => void;
  binary?: string;
  timeoutMs?: number;
  /** The server's max_payload in bytes (default 1 MiB); small values make activations chunk. */
  maxPayload?: number;
  tls?: ServerTls;
  /** Users with passwords (and permissions); without, the server admits anyone. */
  users?: ServerUser[];
}): Promise<NatsServer> {
  const host = opts.host ?? "127.0.0.1";
  const port = opts.port ?? freePort(host === "0.0.0.0" ? "127.0.0.1" : host);
  await Deno.mkdir(opts.storeDir, { recursive: true });
  const extra: string[] = [];
  const conf = serverConfig(opts);
  if (conf) {
    const file = `${opts.storeDir}/server.conf`;
    await Deno.writeTextFile(file, conf, { mode: 0o600 });
    await Deno.chmod(file, 0o600).catch(() => {});
    extra.push("-c", file);
  }
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(opts.binary ?? "nats-server", {
      args: [...extra, "-a", host, "-p", String(port), "-js", "-sd", opts.storeDir],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Error(
        "nats-server not found on PATH: install it (Debian/Ubuntu: apt-get install nats-server) " +
          "or pass --nats URL of a running server",
      );
    }
    throw e;
  }
  const tail: string[] = [];
  const keep = (line: string) => {
    tail.push(line);
    if (tail.length > 20) tail.shift();
    opts.log?.(line);
  };
  const pumps = Promise.all([pumpLines(child.stdout, keep), pumpLines(child.stderr, keep)]);
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
  const probe = host === "0.0.0.0" ? "127.0.0.1" : host;
  while (!(await canConnect(probe, port))) {
    if (exited || Date.now() > deadline) {
      if (!exited) child.kill("SIGKILL");
      await status;
      await pumps;
      throw new Error(`nats-server did not start on ${host}:${port}:\n${tail.join("\n")}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const url = `${opts.tls ? "tls" : "nats"}://${probe}:${port}`;
  return {
    url,
    port,
    process: child,
    status,
    async stop() {
      if (!exited) {
        try {
          child.kill("SIGTERM");
        } catch { /* already gone */ }
        const t = setTimeout(() => {
          try {
            if (!exited) child.kill("SIGKILL");
          } catch { /* gone */ }
        }, 5000);
        await status;
        clearTimeout(t);
      }
      await pumps;
    },
  };
}

/** The configuration file for the options that need one (null when flags suffice). */
export function serverConfig(opts: {
  maxPayload?: number;
  tls?: ServerTls;
  users?: ServerUser[];
}): string | null {
  const lines: string[] = [];
  if (opts.maxPayload) lines.push(`max_payload: ${opts.maxPayload}`);
  if (opts.tls) {
    const t = opts.tls;
    lines.push("tls {");
    lines.push(`  cert_file: ${JSON.stringify(t.cert)}`);
    lines.push(`  key_file: ${JSON.stringify(t.key)}`);
    if (t.ca) lines.push(`  ca_file: ${JSON.stringify(t.ca)}`);
    if (t.verify) lines.push("  verify: true");
    lines.push("  timeout: 5");
    lines.push("}");
  }
  if (opts.users?.length) lines.push(authorizationBlock(opts.users));
  return lines.length ? lines.join("\n") + "\n" : null;
}

/** Streams a child's output line by line through `emit`. */
export async function pumpLines(stream: ReadableStream<Uint8Array>, emit: (line: string) => void) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        emit(buf.slice(0, nl).replace(/\r/g, ""));
        buf = buf.slice(nl + 1);
      }
    }
  } catch { /* the child went away */ }
  if (buf) emit(buf);
}
