/**
 * WebAssembly SIMD implementation of z(seed, name, index) (spec in `../z.ts`), bit-identical to
 * the JS reference `fillZKeyed`, plus the fused in-place perturbation `theta += c z` on a chunk.
 *
 * Kernel (`z_kernel.ts`, AssemblyScript, embedded as base64 in `z_kernel_wasm.ts`): Philox4x32-10
 * on four blocks at once (i32x4 lanes, 32x32->64 products by i64x2.extmul), Box-Muller on the
 * spec's binary64 recipe in f64x2 with bit-mask selects. The kernel owns a fixed memory (never
 * grown) with a z buffer and a theta buffer of `capacity` floats each.
 *
 * Use: `const k = createZKernel()` (null where WebAssembly SIMD is unavailable), then
 * `k.setKey(roundKeys, h0, h1)` once per tensor, then `generate` / `fill` / `perturb` for its
 * ranges. One kernel instance is not reentrant (single-threaded JS: fine), and views returned
 * by `generate` are overwritten by the next call.
 */

import { Z_KERNEL_WASM_BASE64 } from "./z_kernel_wasm.ts";

const TWO32 = 4294967296;

/** A z kernel instance (see module doc). */
export interface ZKernel {
  /** Floats per kernel buffer: the largest `n` for `perturb` (and `capacity - 3` for generate). */
  readonly capacity: number;
  /** Sets the Philox round keys (`philoxRoundKeys`, 20 int32) and name hash for later calls. */
  setKey(roundKeys: Int32Array, h0: number, h1: number): void;
  /**
   * z(start + j) for j in [0, n), n <= capacity - 3, as a view of kernel memory that is valid
   * until the next call on this kernel (copy it to keep it).
   */
  generate(start: number, n: number): Float32Array;
  /**
   * The raw Philox4x32-10 words of the same counters as `generate` (element start + j is word
   * (start + j) mod 4 of block floor((start + j) / 4)), uint32, n <= capacity - 3, as a view of
   * kernel memory valid until the next call.
   */
  words(start: number, n: number): Uint32Array;
  /** `fillZKeyed(out, roundKeys, h0, h1, start)` on the kernel, any length. */
  fill(out: Float32Array, roundKeys: Int32Array, h0: number, h1: number, start: number): void;
  /**
   * In place over `data` (elements start .. start + data.length of the tensor, start a multiple
   * of 4, data.length <= capacity), with c and keep float32 values:
   * `keep === undefined`: data[j] = float32(data[j] + float32(c * z(start + j)));
   * otherwise:            data[j] = float32(float32(keep * data[j]) + float32(c * z(start + j))).
   * The chunk is copied into the kernel, updated with f32x4 IEEE mul/add (no FMA), copied back.
   */
  perturb(data: Float32Array, start: number, c: number, keep?: number): void;
  /**
   * The spec's Box-Muller step alone, for tests: out[2j], out[2j + 1] = lane_even, lane_odd of
   * the pair (a[j], c[j]) (uint32 words), like `boxMullerPair`.
   */
  boxMuller(a: Uint32Array, c: Uint32Array, out: Float32Array): void;
}

interface Exports {
  memory: WebAssembly.Memory;
  keysPtr(): number;
  zPtr(): number;
  thetaPtr(): number;
  capacity(): number;
  setKey(h0: number, h1: number): void;
  generate(blo: number, bhi: number, nBlocks: number): void;
  words(blo: number, bhi: number, nBlocks: number): void;
  perturbAdd(blo: number, bhi: number, n: number, c: number): void;
  perturbDecay(blo: number, bhi: number, n: number, c: number, keep: number): void;
  boxMullerPairs(nQuads: number): void;
}

let module: WebAssembly.Module | null | undefined;

function compiledModule(): WebAssembly.Module | null {
  if (module === undefined) {
    try {
      const bytes = Uint8Array.from(atob(Z_KERNEL_WASM_BASE64), (ch) => ch.charCodeAt(0));
      module = WebAssembly.validate(bytes) ? new WebAssembly.Module(bytes) : null;
    } catch {
      module = null;
    }
  }
  return module;
}

function checkRange(start: number, n: number): void {
  if (!Number.isSafeInteger(start) || start < 0 || !Number.isSafeInteger(start + n)) {
    throw new RangeError(`z kernel: start must be an integer in [0, 2^53 - length), got ${start}`);
  }
}

/**
 * A new z kernel instance (its own 640 KiB memory), or null where the engine has no
 * WebAssembly SIMD (callers then use the JS reference `fillZKeyed`).
 */
export function createZKernel(): ZKernel | null {
  const mod = compiledModule();
  if (mod === null) return null;
  let ex: Exports;
  try {
    ex = new WebAssembly.Instance(mod, {}).exports as unknown as Exports;
  } catch {
    return null;
  }
  const buf = ex.memory.buffer;
  const keys = new Int32Array(buf, ex.keysPtr(), 20);
  const cap = ex.capacity();
  const z = new Float32Array(buf, ex.zPtr(), cap);
  const theta = new Float32Array(buf, ex.thetaPtr(), cap);

  const zWords = new Uint32Array(buf, ex.zPtr(), cap);
  /** Runs `fn` over the blocks of elements start .. start + n; returns the offset in Z. */
  const blocks = (
    what: string,
    start: number,
    n: number,
    fn: (blo: number, bhi: number, nBlocks: number) => void,
  ): number => {
    checkRange(start, n);
    if (!Number.isInteger(n) || n < 0 || n > cap - 3) {
      throw new RangeError(`z kernel: ${what} length must be in [0, ${cap - 3}], got ${n}`);
    }
    const block = Math.floor(start / 4);
    const off = start - 4 * block;
    fn(block % TWO32, Math.floor(block / TWO32), Math.ceil((off + n) / 4));
    return off;
  };
  const generate = (start: number, n: number): Float32Array => {
    const off = blocks("generate", start, n, ex.generate);
    return z.subarray(off, off + n);
  };

  const setKey = (roundKeys: Int32Array, h0: number, h1: number): void => {
    if (roundKeys.length !== 20) {
      throw new RangeError(`z kernel: expected 20 round keys, got ${roundKeys.length}`);
    }
    keys.set(roundKeys);
    ex.setKey(h0 | 0, h1 | 0);
  };

  return {
    capacity: cap,
    setKey,
    generate,
    words(start, n) {
      const off = blocks("words", start, n, ex.words);
      return zWords.subarray(off, off + n);
    },
    fill(out, roundKeys, h0, h1, start) {
      checkRange(start, out.length);
      setKey(roundKeys, h0, h1);
      const piece = cap - 16; // a multiple of 4: pieces after the first stay block-aligned
      for (let pos = 0; pos < out.length; pos += piece) {
        const n = Math.min(piece, out.length - pos);
        out.set(generate(start + pos, n), pos);
      }
    },
    perturb(data, start, c, keep) {
      const n = data.length;
      checkRange(start, n);
      if (start % 4 !== 0 || n > cap) {
        throw new RangeError(
          `z kernel: perturb needs start % 4 == 0 and length <= ${cap}, got ${start}, ${n}`,
        );
      }
      if (n === 0) return;
      const block = start / 4;
      theta.set(data);
      if (keep === undefined) {
        ex.perturbAdd(block % TWO32, Math.floor(block / TWO32), n, c);
      } else {
        ex.perturbDecay(block % TWO32, Math.floor(block / TWO32), n, c, keep);
      }
      data.set(n === cap ? theta : theta.subarray(0, n));
    },
    boxMuller(a, c, out) {
      if (c.length !== a.length || out.length !== 2 * a.length) {
        throw new RangeError("z kernel: boxMuller needs a.length == c.length == out.length / 2");
      }
      const words = new Uint32Array(buf, ex.thetaPtr(), cap);
      const per = cap / 8; // pairs per call (quads of 4 pairs take 8 words)
      for (let pos = 0; pos < a.length; pos += per) {
        const n = Math.min(per, a.length - pos);
        const quads = Math.ceil(n / 4);
        for (let j = 0; j < n; j++) {
          const q = j >> 2, l = j & 3;
          words[8 * q + l] = a[pos + j];
          words[8 * q + 4 + l] = c[pos + j];
        }
        ex.boxMullerPairs(quads);
        for (let j = 0; j < n; j++) {
          const q = j >> 2, l = j & 3;
          out[2 * (pos + j)] = z[8 * q + l];
          out[2 * (pos + j) + 1] = z[8 * q + 4 + l];
        }
      }
    },
  };
}
