/**
 * Random and mutated wire messages for the fuzz tests: random bytes, single-byte mutations
 * (flip, replace, insert, delete, truncate) of valid msgpack, and valid messages with hostile
 * field values. Deterministic for a given seed.
 */
import { pack } from "msgpackr";
import { createHmac } from "node:crypto";

/** xorshift32: reproducible fuzz cases. */
export function rng(seed: number) {
  let s = seed >>> 0 || 1;
  const next = () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 2 ** 32;
  };
  return {
    next,
    int: (n: number) => Math.floor(next() * n),
    pick: <T>(a: readonly T[]): T => a[Math.floor(next() * a.length)],
    bytes: (n: number) => Uint8Array.from({ length: n }, () => Math.floor(next() * 256)),
  };
}
export type Rng = ReturnType<typeof rng>;

/** One random byte-level mutation of `b`. */
export function mutate(r: Rng, b: Uint8Array): Uint8Array {
  const a = [...b];
  const i = r.int(Math.max(1, a.length));
  switch (r.int(5)) {
    case 0:
      a[i] ^= 1 << r.int(8);
      break;
    case 1:
      a[i] = r.int(256);
      break;
    case 2:
      a.splice(i, 0, r.int(256));
      break;
    case 3:
      a.splice(i, 1);
      break;
    default:
      a.length = i;
  }
  return Uint8Array.from(a);
}

/** Field values that no valid message holds at these places. */
export const HOSTILE: unknown[] = [
  null,
  -1,
  0,
  1e9,
  2 ** 53 + 1,
  NaN,
  Infinity,
  "x",
  "",
  "9".repeat(400),
  [],
  {},
  { step: 1 },
  new Uint8Array(7),
  true,
];

/** A valid message with one field set to a hostile value (or removed). */
export function mutateField(r: Rng, o: Record<string, unknown>): Record<string, unknown> {
  const keys = Object.keys(o);
  const out = { ...o };
  const k = r.pick(keys);
  if (r.int(6) === 0) delete out[k];
  else out[k] = r.pick(HOSTILE);
  return out;
}

/** The run key's tag as cluster/protocol.ts computes it (so the test can forge insider messages). */
export function tag(key: Uint8Array, role: "coordinator" | "worker", data: Uint8Array) {
  const h = createHmac("sha256", key);
  h.update(role === "coordinator" ? "dpzo/c/" : "dpzo/w/");
  h.update(data);
  const out = new Uint8Array(data.byteLength + 16);
  out.set(data);
  out.set(new Uint8Array(h.digest().buffer, 0, 16), data.byteLength);
  return out;
}

export { pack };
