/**
 * The slow-link proxy of the benchmarks (bench/link_proxy.ts) in front of a real TCP echo
 * server: bytes pass intact both ways, a round trip gains at least twice the one-way delay, a
 * bandwidth cap slows a transfer to about its rate, a stall holds every byte until it ends, and
 * a drop closes the client's side. Bounds are loose (a shared machine): they test the link, not
 * the speed of this code.
 */
import { strict as assert } from "node:assert";
import { startLinkProxy } from "../bench/link_proxy.ts";

/** A TCP server that writes back what it reads; `close()` stops it and its connections. */
function echoServer() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const done = (async () => {
    try {
      for await (const c of listener) {
        conns.add(c);
        c.readable.pipeTo(c.writable).catch(() => {}).finally(() => conns.delete(c));
      }
    } catch { /* closed */ }
  })();
  return {
    target: `127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    async close() {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      await done;
    },
  };
}

/** Writes `data` and reads back as many bytes; resolves with them. */
async function roundTrip(conn: Deno.Conn, data: Uint8Array): Promise<Uint8Array> {
  const out = new Uint8Array(data.length);
  const reading = (async () => {
    let got = 0;
    while (got < out.length) {
      const n = await conn.read(out.subarray(got));
      if (n === null) throw new Error(`closed after ${got} of ${out.length} bytes`);
      got += n;
    }
  })();
  let off = 0;
  while (off < data.length) off += await conn.write(data.subarray(off));
  await reading;
  return out;
}

const random = (n: number) => {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) crypto.getRandomValues(b.subarray(i, i + 65536));
  return b;
};

Deno.test("link proxy: bytes pass intact, latency and a bandwidth cap slow them", async () => {
  const echo = echoServer();
  const link = startLinkProxy({ target: echo.target });
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: link.port });
    const data = random(1 << 20);
    assert.deepEqual(await roundTrip(conn, data), data);
    assert.equal(link.bytes.up, data.length);
    assert.equal(link.bytes.down, data.length);

    // 100 ms each way: a small round trip takes at least 200 ms.
    link.shape({ delayMs: 100 });
    let t0 = performance.now();
    assert.deepEqual(await roundTrip(conn, new Uint8Array([1, 2, 3])), new Uint8Array([1, 2, 3]));
    const rtt = performance.now() - t0;
    assert.ok(rtt >= 199, `round trip ${rtt.toFixed(1)} ms, expected at least 200`);

    // 4 Mbit/s each way (500 kB/s): 256 KiB out and back is at least ~0.5 s of serialization
    // on each lane, pipelined: at least 0.4 s in all, unlike the unshaped MiB above.
    link.shape({ delayMs: 0, mbit: 4 });
    const chunk = random(256 * 1024);
    t0 = performance.now();
    assert.deepEqual(await roundTrip(conn, chunk), chunk);
    const s = (performance.now() - t0) / 1000;
    assert.ok(s >= 0.4, `256 KiB at 4 Mbit/s took ${s.toFixed(2)} s, expected at least 0.4`);
    assert.ok(s < 10, `256 KiB at 4 Mbit/s took ${s.toFixed(2)} s`);
    conn.close();
  } finally {
    await link.close();
    await echo.close();
  }
});

Deno.test("link proxy: a stall holds the bytes until it ends; a drop closes the client", async () => {
  const echo = echoServer();
  const link = startLinkProxy({ target: echo.target });
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: link.port });
    assert.deepEqual(await roundTrip(conn, new Uint8Array([7])), new Uint8Array([7]));
    const t0 = performance.now();
    const stall = link.stall(600);
    const back = await roundTrip(conn, new Uint8Array([8, 9]));
    const waited = performance.now() - t0;
    await stall;
    assert.deepEqual(back, new Uint8Array([8, 9]));
    assert.ok(waited >= 590, `answer after ${waited.toFixed(0)} ms of a 600 ms stall`);

    link.drop();
    const n = await conn.read(new Uint8Array(4)).catch(() => null);
    assert.equal(n, null, "the client's side is closed");
    conn.close();
    // The proxy still takes new connections after a drop.
    const again = await Deno.connect({ hostname: "127.0.0.1", port: link.port });
    assert.deepEqual(await roundTrip(again, new Uint8Array([5])), new Uint8Array([5]));
    again.close();
  } finally {
    await link.close();
    await echo.close();
  }
});
