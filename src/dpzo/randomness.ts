/**
 * The secret randomness of DP-ZO: Poisson sampling, the noise, and the public step seeds.
 *
 * Privacy rests on the sample and the noise being unpredictable, so they come from the
 * operating system's CSPRNG (`crypto.getRandomValues`) and never from anything seeded by the
 * public step seed (DESIGN.md, "Noise from the public seed").
 *
 * `insecureRandom(seed)` replaces the CSPRNG by a seeded Philox4x32-10 stream so that tests and
 * comparisons (1 process vs N processes) are reproducible. A run that uses it is NOT private,
 * and says so.
 */
import { philox4x32_10 } from "../rng/philox.ts";

export interface SecretRandom {
  /** A uniform double in the open interval (0, 1), 53 random bits. */
  uniform(): number;
  /** A uniform 64-bit integer. */
  u64(): bigint;
  /** True for the seeded, non-private generator. */
  readonly insecure: boolean;
}

const TWO_M53 = 2 ** -53;

/** Builds a generator from a source of uint32 words. */
function fromWords(next: () => number, insecure: boolean): SecretRandom {
  return {
    insecure,
    uniform() {
      // 53 bits: 27 from one word, 26 from another; +0.5 keeps the value away from 0 and 1.
      const hi = next() >>> 5, lo = next() >>> 6;
      return (hi * 67108864 + lo + 0.5) * TWO_M53;
    },
    u64() {
      return (BigInt(next()) << 32n) | BigInt(next());
    },
  };
}

/** The operating system's CSPRNG, read in blocks of 1024 words. */
export function cryptoRandom(): SecretRandom {
  const buf = new Uint32Array(1024);
  let pos = buf.length;
  return fromWords(() => {
    if (pos === buf.length) {
      crypto.getRandomValues(buf);
      pos = 0;
    }
    return buf[pos++];
  }, false);
}

/** Domain tag in the Philox counter so this stream never meets z's counters ("DPZO"). */
const DOMAIN = 0x44505a4f;

/**
 * Words of Philox4x32-10 keyed by the 64-bit `seed`, block i at counter `(i mod 2^32, c1(i),
 * c2, DOMAIN)`: the one generator behind both reproducible streams below.
 */
function philoxStream(seed: number | bigint, c1: (i: number) => number, c2: number): SecretRandom {
  const s = BigInt.asUintN(64, BigInt(seed));
  const k0 = Number(s & 0xffffffffn), k1 = Number(s >> 32n);
  const out = new Uint32Array(4);
  let block = 0, pos = 4;
  return fromWords(() => {
    if (pos === 4) {
      philox4x32_10(block % 4294967296, c1(block), c2, DOMAIN, k0, k1, out);
      block++;
      pos = 0;
    }
    return out[pos++];
  }, true);
}

/** A reproducible, NOT private generator: Philox4x32-10 keyed by `seed`, counter 0, 1, 2, … */
export function insecureRandom(seed: number | bigint): SecretRandom {
  return philoxStream(seed, (i) => Math.floor(i / 4294967296), DOMAIN);
}

/** Second counter word of the per-step streams ("STEP"): never equal to `insecureRandom`'s. */
const STEP_DOMAIN = 0x53544550;

/**
 * The reproducible, NOT private stream of one training step: Philox4x32-10 keyed by `seed`,
 * counter (i, step, "STEP", "DPZO"). Keyed by the step, not by a position in one long stream, so
 * that a resumed run (coordinator restarted) or a retried step (a worker died mid-step) draws
 * exactly the batch, seed and noise that the uninterrupted run drew at that step.
 */
export function insecureStepRandom(seed: number | bigint, step: number): SecretRandom {
  if (!Number.isInteger(step) || step < 0 || step >= 2 ** 32) {
    throw new Error(`insecureStepRandom: step ${step} out of range`);
  }
  return philoxStream(seed, () => step, STEP_DOMAIN);
}

/**
 * The secret randomness of each step: the CSPRNG (nothing to restore after a failure: a step
 * that was not released is redrawn with fresh randomness), or with `insecure_seed` the per-step
 * Philox stream.
 */
export function stepRandomness(insecureSeed: number | null): (step: number) => SecretRandom {
  if (insecureSeed === null) {
    const rng = cryptoRandom();
    return () => rng;
  }
  return (step) => insecureStepRandom(insecureSeed, step);
}
