/**
 * The body of a worker's heartbeat thread (see cluster/heartbeat.ts): its own NATS connection,
 * one heartbeat every `intervalMs`, whatever the worker's main thread is computing. Started with
 * a `start` message, ended with `stop`.
 */
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { encode, subjects } from "./protocol.ts";
import { connectOptions, installRunKey, type NatsSecurity } from "./nats_security.ts";
import { RECONNECT_OPTIONS } from "./nats_connect.ts";

export interface HeartbeatStart {
  type: "start";
  url: string;
  run: string;
  worker: string;
  intervalMs: number;
  security: NatsSecurity;
}

interface Scope {
  onmessage: ((e: MessageEvent) => void) | null;
  postMessage(m: unknown): void;
  close(): void;
}
const scope = globalThis as unknown as Scope;

let nc: NatsConnection | undefined;
let timer: ReturnType<typeof setInterval> | undefined;
let stopping = false;

async function start(m: HeartbeatStart) {
  installRunKey(m.run, m.security);
  const beat = encode(m.run, { worker: m.worker }, "worker");
  const subject = subjects(m.run).heartbeat;
  // Until connected, retried quietly: the main thread says what it is waiting for.
  while (!nc && !stopping) {
    try {
      nc = await connect({
        servers: m.url,
        name: `dpzo-heartbeat-${m.worker}`,
        ...RECONNECT_OPTIONS,
        ...connectOptions(m.url, m.security, () => {}),
      });
    } catch (e) {
      scope.postMessage({ type: "error", message: (e as Error).message });
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  if (stopping) return await stop();
  scope.postMessage({ type: "started" });
  timer = setInterval(() => {
    try {
      nc!.publish(subject, beat);
    } catch { /* reconnecting or closing */ }
  }, m.intervalMs);
}

async function stop() {
  stopping = true;
  if (timer !== undefined) clearInterval(timer);
  if (nc && !nc.isClosed()) await nc.close().catch(() => {});
  scope.postMessage({ type: "stopped" });
  scope.close();
}

scope.onmessage = (e: MessageEvent) => {
  const m = e.data as HeartbeatStart | { type: "stop" };
  if (m.type === "start") {
    start(m).catch((err) => scope.postMessage({ type: "error", message: String(err) }));
  } else if (m.type === "stop") stop();
};
