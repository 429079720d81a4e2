/**
 * A worker's heartbeats come from a thread of their own (cluster/heartbeat_thread.ts, with its
 * own NATS connection), so that a forward pass of a large model, which holds the main thread for
 * minutes, does not make the coordinator declare the worker dead. They say the process is alive;
 * a worker whose process exits is noticed sooner, by its closed connection (cluster/transport/
 * nats.ts, "alive" probes).
 */
import type { NatsSecurity } from "./nats_security.ts";
import type { HeartbeatStart } from "./heartbeat_thread.ts";

export interface HeartbeatThread {
  stop(): Promise<void>;
}

/** Starts the heartbeat thread of worker `worker` of `run` on `url`. */
export function startHeartbeatThread(opts: {
  url: string;
  run: string;
  worker: string;
  intervalMs: number;
  security: NatsSecurity;
  log: (line: string) => void;
}): HeartbeatThread {
  const thread = new Worker(new URL("./heartbeat_thread.ts", import.meta.url).href, {
    type: "module",
  });
  let said = false;
  let stopped!: () => void;
  const done = new Promise<void>((r) => (stopped = r));
  thread.onmessage = (e: MessageEvent) => {
    const m = e.data as { type: string; message?: string };
    if (m.type === "stopped") stopped();
    else if (m.type === "error" && !said) {
      said = true;
      opts.log(`heartbeat thread: ${m.message}; heartbeats also come from the main thread`);
    }
  };
  thread.onerror = (e) => {
    e.preventDefault();
    if (!said) opts.log(`heartbeat thread failed: ${e.message}`);
    said = true;
    stopped();
  };
  const start: HeartbeatStart = {
    type: "start",
    url: opts.url,
    run: opts.run,
    worker: opts.worker,
    intervalMs: opts.intervalMs,
    security: opts.security,
  };
  thread.postMessage(start);
  return {
    async stop() {
      thread.postMessage({ type: "stop" });
      const t = setTimeout(() => stopped(), 2000);
      await done;
      clearTimeout(t);
      thread.terminate();
    },
  };
}
