/**
 * A slow, lossy link in user space: a TCP proxy between a process and nats-server that adds
 * one-way latency, caps the bandwidth of each direction (a token bucket), drops its connections
 * (closes both sides) and stalls them (forwards nothing for N seconds: a partition that TCP
 * survives). For tests and benchmarks on machines whose kernel has no netem.
 *
 * A link of `delayMs` one way and `mbit` Mbit/s: each piece of at most 4 KiB read from one side
 * leaves once its bytes have had their time on the wire at that rate (serialization; a token
 * bucket, empty by default, so no burst) and is written to the other side `delayMs` later
 * (propagation), in order. The reader waits for the wire, so a fast sender is held back by TCP
 * as on a real link. Module use:
 *
 *   const link = await startLinkProxy({ target: "127.0.0.1:4222", delayMs: 25, mbit: 10 });
 *   // connect to nats://127.0.0.1:${link.port}; link.stall(30_000); link.drop(); link.bytes
 *   await link.close();
 *
 * CLI (commands on stdin: `stall SECONDS`, `drop`, `shape RTT_MS MBIT|off`, `bytes`, `quit`):
 *
 *   deno run -A bench/link_proxy.ts --target 127.0.0.1:4222 [--port 0] [--rtt-ms 50]
 *     [--mbit 10] [--burst-kib 0]
 */
import { parseArgs } from "node:util";
import { z } from "zod";

export interface LinkShape {
  /** Latency added to each direction (the round trip gains twice this). */
  delayMs: number;
  /** Bandwidth of each direction in Mbit/s (10^6 bit/s); undefined: not capped. */
  mbit?: number;
  /**
   * Bytes the bucket may hold (a burst sent at once after a quiet time); default 0: every byte
   * takes its time on the wire, as on a real link of that rate.
   */
  burstBytes?: number;
}

export interface LinkProxy {
  /** The port it listens on (127.0.0.1). */
  readonly port: number;
  /** Bytes forwarded so far: `up` client to target, `down` target to client. */
  readonly bytes: { up: number; down: number };
  /** Connections open now. */
  readonly open: number;
  /** Changes latency and bandwidth from now on (connections stay). */
  shape(s: LinkShape): void;
  /** Forwards nothing either way for `ms` (new connections too); resolves when it ends. */
  stall(ms: number): Promise<void>;
  /** Closes every connection on both sides (the clients see the server go away). */
  drop(): void;
  close(): Promise<void>;
}

const PIECE = 4096;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A direction of the link: its bucket (as a virtual clock) and counters. */
interface Lane {
  /** When the last piece finished serializing (ms, performance.now()). */
  free: number;
  bytes: number;
}

export const LinkShapeSchema = z.object({
  delayMs: z.number().nonnegative().max(60_000),
  mbit: z.number().positive().optional(),
  burstBytes: z.number().int().positive().optional(),
});

const Target = z.string().regex(/^[\w.-]+:\d{1,5}$/, {
  error: "expected HOST:PORT, e.g. 127.0.0.1:4222",
});

/** Starts a proxy on 127.0.0.1:`port` (default: a free one) to `target` (HOST:PORT). */
export function startLinkProxy(
  opts: { target: string; port?: number } & Partial<LinkShape>,
): LinkProxy {
  const [hostname, portText] = Target.parse(opts.target).split(":");
  let shape = LinkShapeSchema.parse({
    delayMs: opts.delayMs ?? 0,
    mbit: opts.mbit,
    burstBytes: opts.burstBytes,
  });
  const listener = Deno.listen({ hostname: "127.0.0.1", port: opts.port ?? 0 });
  const lanes = { up: { free: 0, bytes: 0 }, down: { free: 0, bytes: 0 } };
  const conns = new Set<Deno.Conn>();
  let open = 0;
  /** Resolves when the current stall ends (already resolved when none). */
  let gate: Promise<void> = Promise.resolve();
  let stallUntil = 0;
  let closed = false;

  /** When a piece of `n` bytes read now leaves the sender (token bucket). */
  const departure = (lane: Lane, n: number): number => {
    const now = performance.now();
    if (!shape.mbit) return now;
    const bytesPerMs = shape.mbit * 1e6 / 8 / 1000;
    const burst = shape.burstBytes ?? 0;
    lane.free = Math.max(lane.free, now - burst / bytesPerMs) + n / bytesPerMs;
    return Math.max(now, lane.free);
  };

  /** Forwards src to dst through `lane`; ends (closing both) when either side ends. */
  const pump = async (src: Deno.Conn, dst: Deno.Conn, lane: Lane) => {
    const queue: { at: number; data: Uint8Array }[] = [];
    let wake: (() => void) | null = null;
    let ended = false;
    const writer = (async () => {
      for (;;) {
        if (!queue.length) {
          if (ended) return;
          await new Promise<void>((r) => (wake = r));
          continue;
        }
        const { at, data } = queue[0];
        const wait = at - performance.now();
        if (wait > 0.5) await sleep(wait);
        await gate;
        queue.shift();
        let off = 0;
        while (off < data.length) off += await dst.write(data.subarray(off));
        lane.bytes += data.length;
      }
    })();
    const buf = new Uint8Array(64 * 1024);
    try {
      for (;;) {
        await gate;
        const n = await src.read(buf);
        if (n === null) break;
        for (let off = 0; off < n; off += PIECE) {
          const piece = buf.slice(off, Math.min(n, off + PIECE));
          const leave = departure(lane, piece.length);
          const wait = leave - performance.now();
          if (wait > 0.5) await sleep(wait);
          await gate;
          queue.push({ at: leave + shape.delayMs, data: piece });
          const w = wake as (() => void) | null;
          wake = null;
          w?.();
        }
      }
    } catch { /* the connection was dropped */ }
    ended = true;
    (wake as (() => void) | null)?.();
    await writer.catch(() => {});
  };

  const serve = async (client: Deno.Conn) => {
    let server: Deno.Conn;
    try {
      server = await Deno.connect({ hostname, port: Number(portText) });
    } catch {
      client.close();
      return;
    }
    conns.add(client);
    conns.add(server);
    open++;
    const end = () => {
      for (const c of [client, server]) {
        if (conns.delete(c)) {
          try {
            c.close();
          } catch { /* closed */ }
        }
      }
    };
    await Promise.all([
      pump(client, server, lanes.up).finally(end),
      pump(server, client, lanes.down).finally(end),
    ]);
    open--;
  };

  const accepting = (async () => {
    try {
      for await (const c of listener) serve(c);
    } catch { /* closed */ }
  })();

  return {
    port: (listener.addr as Deno.NetAddr).port,
    bytes: {
      get up() {
        return lanes.up.bytes;
      },
      get down() {
        return lanes.down.bytes;
      },
    },
    get open() {
      return open;
    },
    shape(s) {
      shape = LinkShapeSchema.parse(s);
      lanes.up.free = lanes.down.free = 0;
    },
    stall(ms) {
      const until = performance.now() + ms;
      if (until <= stallUntil) return gate;
      stallUntil = until;
      const previous = gate;
      gate = (async () => {
        await previous;
        while (performance.now() < stallUntil) await sleep(stallUntil - performance.now());
      })();
      return gate;
    },
    drop() {
      for (const c of [...conns]) {
        conns.delete(c);
        try {
          c.close();
        } catch { /* closed */ }
      }
    },
    async close() {
      if (closed) return;
      closed = true;
      listener.close();
      this.drop();
      await accepting;
    },
  };
}

const Cli = z.object({
  target: Target,
  port: z.coerce.number().int().min(0).max(65535),
  "rtt-ms": z.coerce.number().nonnegative(),
  mbit: z.coerce.number().positive().optional(),
  "burst-kib": z.coerce.number().nonnegative(),
});

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      target: { type: "string" },
      port: { type: "string", default: "0" },
      "rtt-ms": { type: "string", default: "0" },
      mbit: { type: "string" },
      "burst-kib": { type: "string", default: "0" },
    },
  });
  const parsed = Cli.safeParse(values);
  if (!parsed.success) {
    const i = parsed.error.issues[0];
    console.error(`link_proxy: --${i.path.join(".")}: ${i.message}`);
    Deno.exit(2);
  }
  const o = parsed.data;
  const link = startLinkProxy({
    target: o.target,
    port: o.port,
    delayMs: o["rtt-ms"] / 2,
    mbit: o.mbit,
    burstBytes: Math.round(o["burst-kib"] * 1024) || undefined,
  });
  console.log(
    `link_proxy: 127.0.0.1:${link.port} -> ${o.target}, round trip +${o["rtt-ms"]} ms, ` +
      `${o.mbit ? `${o.mbit} Mbit/s each way` : "bandwidth not capped"}`,
  );
  const lines = Deno.stdin.readable.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await lines.read();
    if (done) break;
    buf += value;
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const [cmd, ...args] = buf.slice(0, nl).trim().split(/\s+/);
      buf = buf.slice(nl + 1);
      if (cmd === "stall" && Number(args[0]) > 0) {
        console.log(`stalled for ${args[0]} s`);
        link.stall(Number(args[0]) * 1000).then(() => console.log("stall over"));
      } else if (cmd === "drop") {
        link.drop();
        console.log("connections dropped");
      } else if (cmd === "shape" && Number(args[0]) >= 0) {
        link.shape({
          delayMs: Number(args[0]) / 2,
          mbit: args[1] && args[1] !== "off" ? Number(args[1]) : undefined,
        });
        console.log(`round trip +${args[0]} ms, ${args[1] ?? "off"} Mbit/s`);
      } else if (cmd === "bytes") {
        console.log(`up ${link.bytes.up} B, down ${link.bytes.down} B, ${link.open} open`);
      } else if (cmd === "quit") {
        await link.close();
        Deno.exit(0);
      } else if (cmd) {
        console.log("commands: stall SECONDS | drop | shape RTT_MS MBIT|off | bytes | quit");
      }
    }
  }
  // stdin closed (started in the background): run until a signal.
  const stop = async () => {
    await link.close();
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
}
