/**
 * A worker's heartbeats come from a thread of their own (cluster/heartbeat.ts): while the main
 * thread is held by a long synchronous computation (a forward pass of a large model), they keep
 * reaching nats-server, so the coordinator does not declare the worker dead. Real nats-server,
 * real thread; the main thread is blocked by a busy loop.
 */
import { strict as assert } from "node:assert";
import { connect } from "@nats-io/transport-node";
import { startNatsServer } from "../cluster/nats_server.ts";
import { startHeartbeatThread } from "../cluster/heartbeat.ts";
import { decode, Heartbeat, subjects } from "../cluster/protocol.ts";
import { lacks } from "./fixtures.ts";

Deno.test({
  name: "heartbeats keep coming while the worker's main thread computes for 2 s",
  ignore: lacks("nats-server"),
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const tmp = await Deno.makeTempDir({ prefix: "dpzo-heartbeat-" });
    const server = await startNatsServer({ storeDir: `${tmp}/nats` });
    const nc = await connect({ servers: server.url });
    const run = "hb";
    const seen: number[] = [];
    const sub = nc.subscribe(subjects(run).heartbeat, {
      callback: (err, msg) => {
        if (err) return;
        const h = decode(msg.data, run, Heartbeat, () => {}, "heartbeat", "worker");
        if (h?.worker === "w1") seen.push(Date.now());
      },
    });
    await nc.flush();
    const thread = startHeartbeatThread({
      url: server.url,
      run,
      worker: "w1",
      intervalMs: 100,
      security: {},
      log: (l) => console.error(l),
    });
    try {
      // The thread is up once its first heartbeats arrive.
      const deadline = Date.now() + 20_000;
      while (seen.length < 2) {
        assert.ok(Date.now() < deadline, "no heartbeat from the thread within 20 s");
        await new Promise((r) => setTimeout(r, 50));
      }
      // Hold this thread (no timer, no socket read) for 2 s, as a long forward pass does.
      const before = seen.length;
      const end = Date.now() + 2000;
      while (Date.now() < end) { /* busy */ }
      // What the thread published meanwhile is queued in this connection's socket: delivered
      // the moment this thread reads again, all at once.
      await new Promise((r) => setTimeout(r, 300));
      const during = seen.length - before;
      assert.ok(during >= 10, `only ${during} heartbeats over 2 s of a blocked main thread`);
    } finally {
      await thread.stop();
      sub.unsubscribe();
      await nc.close();
      await server.stop();
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
    }
  },
});
