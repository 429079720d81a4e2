/**
 * Staying connected to nats-server: the coordinator and the workers connect with unlimited
 * reconnects (a server that `dpzo launch` restarts, or one a user runs and brings back, is found
 * again on the same URL), retry a first connection that is refused, and say every few seconds
 * which URL they are waiting for. Wrong credentials or certificates are not retried: they do not
 * get better by waiting.
 */
import { connect, type NatsConnection, type NodeConnectionOptions } from "@nats-io/transport-node";

/** Reconnect forever, quickly: a restarted server is found within about a second. */
export const RECONNECT_OPTIONS: Partial<NodeConnectionOptions> = {
  maxReconnectAttempts: -1,
  reconnectTimeWait: 500,
  reconnectJitter: 250,
  reconnectJitterTLS: 500,
  // A server host that vanishes (no reset) is noticed within ~30 s, not the default 4 min.
  pingInterval: 10_000,
  maxPingOut: 3,
};

/** How often a process waiting for nats-server says so. */
export const WAITING_LINE_MS = 5000;

/** An error about who we are (credentials, certificates, permissions): retrying cannot help. */
export function isRefusal(e: unknown): boolean {
  return /authori[sz]ation|authentication|certificate|tls|permission/i.test(
    (e as Error)?.message ?? "",
  );
}

/** A request that nobody subscribes to (NATS "no responders", status 503). */
export function isNoResponders(e: unknown): boolean {
  let x = e as (Error & { isNoResponders?: () => boolean; cause?: unknown }) | undefined;
  for (let depth = 0; x && depth < 3; depth++, x = x.cause as typeof x) {
    if (
      x.name === "NoRespondersError" || x.isNoResponders?.() || /no responders/i.test(x.message)
    ) {
      return true;
    }
  }
  return false;
}

/**
 * Connects to `url`, retrying every half second while the server is unreachable (a line every
 * few seconds through `log` names the URL) until `deadline` (default: never).
 */
export async function connectRetrying(
  url: string,
  name: string,
  options: Partial<NodeConnectionOptions>,
  log: (line: string) => void,
  who: string,
  deadline = Infinity,
): Promise<NatsConnection> {
  const t0 = Date.now();
  let said = 0;
  for (;;) {
    try {
      const nc = await connect({ servers: url, name, ...RECONNECT_OPTIONS, ...options });
      if (said) log(`${who}: connected to nats-server at ${url}`);
      return nc;
    } catch (e) {
      const msg = (e as Error).message;
      if (isRefusal(e)) throw new Error(`NATS at ${url} refused the ${who}: ${msg}`);
      if (Date.now() > deadline) throw new Error(`cannot reach NATS at ${url}: ${msg}`);
      if (Date.now() - said >= WAITING_LINE_MS) {
        said = Date.now();
        log(
          `${who}: nats-server at ${url} unreachable (${msg}) for ${
            ((Date.now() - t0) / 1000).toFixed(0)
          } s; retrying (start it, or check --nats)`,
        );
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

/**
 * Logs the connection's outages: when it drops, every few seconds while it is down (naming the
 * URL), and when it is back. Calls `onChange(connected)` on each change. Ends with the connection.
 */
export function watchConnection(
  nc: NatsConnection,
  url: string,
  log: (line: string) => void,
  who: string,
  onChange?: (connected: boolean) => void,
): void {
  let downSince = 0;
  let timer: ReturnType<typeof setInterval> | undefined;
  const stopTimer = () => {
    if (timer !== undefined) clearInterval(timer);
    timer = undefined;
  };
  (async () => {
    for await (const st of nc.status()) {
      if (st.type === "disconnect" && !downSince) {
        downSince = Date.now();
        log(`${who}: lost nats-server at ${url}; reconnecting`);
        timer = setInterval(() => {
          log(
            `${who}: nats-server at ${url} unreachable for ${
              ((Date.now() - downSince) / 1000).toFixed(0)
            } s; retrying (the run resumes when it is back)`,
          );
        }, WAITING_LINE_MS);
        onChange?.(false);
      } else if (st.type === "reconnect") {
        stopTimer();
        const s = downSince ? ((Date.now() - downSince) / 1000).toFixed(1) : "0";
        downSince = 0;
        log(`${who}: reconnected to nats-server at ${url} after ${s} s`);
        onChange?.(true);
      }
    }
  })().catch(() => {}).finally(stopTimer);
}

/** An error that a server restart explains (the request can be made again once it is back). */
export function isTransient(e: unknown): boolean {
  return /disconnect|timeout|timed out|connection|no responders|503|closed|not enabled|refused/i
    .test((e as Error)?.message ?? "") || isNoResponders(e);
}

/**
 * `f()`, made again while it fails with a transient error (nats-server restarting, JetStream
 * still recovering its streams), for up to `ms`; one line says what is retried.
 */
export async function retryTransient<T>(
  f: () => Promise<T>,
  what: string,
  log: (line: string) => void,
  ms = 120_000,
): Promise<T> {
  const deadline = Date.now() + ms;
  let said = false;
  for (;;) {
    try {
      return await f();
    } catch (e) {
      if (!isTransient(e) || Date.now() > deadline) throw e;
      if (!said) log(`${what}: ${(e as Error).message}; retrying while nats-server comes back`);
      said = true;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}
