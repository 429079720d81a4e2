/**
 * Where a stage's weights live: ordinary process memory, one ArrayBuffer per parameter, outside
 * TensorFlow.js' WASM heap. The heap is a 32-bit memory of at most 4 GiB; with the weights in it
 * no process held more than ~0.9B float32 parameters (an OPT-1.3b aborted). Out here a stage is
 * as large as its machine; the heap keeps the activations and scratch of a forward.
 *
 * The forward reads the weights where they are: OpenBLAS multiplies straight from a float32
 * weight's memory (src/tensor/blas.ts `matMulRaw`), small parameters (biases, LayerNorm) are
 * copied onto the heap as they are used, embedding rows are gathered onto it. The perturbation
 * pass (src/dpzo/perturbation.ts) writes float32 weights in place.
 *
 * Storage precision (`dtype`, as Hugging Face's `torch_dtype`): `float32` (4 bytes per weight,
 * the default), or `bfloat16` / `float16` (2 bytes; the raw bits in a Uint16Array), computed in
 * float32: a half weight is widened into a float32 scratch as the forward reaches it
 * (`readWeight`). Two traps of half precision are designed out here, not hoped away:
 *
 * - Perturbing in place does not cancel: every +phi z, -2 phi z, +phi z cycle would round, and
 *   over thousands of steps the rounding walks the weights away. So the perturbation of a half
 *   weight never enters its store: the stage records it (`Stage.virtual`: seed and coefficient)
 *   and `readWeight` adds `float32(c * z)` to the widened float32 copy, the same arithmetic as
 *   the in-place float32 pass.
 * - An update `lr * ghat * z` far below half an ulp vanishes under round-to-nearest. So the
 *   update is written with stochastic rounding (`commitHalf`): the float32 result
 *   `float32(float32(keep * w) + float32(c * z))` rounds up with probability equal to its
 *   distance from the half value below, in units of the gap, so it is unbiased; the random bits
 *   are a pure function of the step seed, the name and the index (`roundingBits`), so export,
 *   resume and other topologies replay it bit for bit.
 */
import { perturb, perturbKernel, type WeightDecay } from "../dpzo/perturbation.ts";
import { nameHash, seedKey } from "../rng/z.ts";
import { philox4x32_10, philoxRoundKeys } from "../rng/philox.ts";
import { type HalfDtype, narrowStochastic, widen } from "./half.ts";

/** How the weights of a stage are stored (LoRA adapters are always float32). */
export type StorageDtype = "float32" | HalfDtype;

export const STORAGE_DTYPES: readonly StorageDtype[] = ["float32", "bfloat16", "float16"];

/** A stored parameter: float32 values, or the raw bits of bfloat16/float16 ones. */
export type StoredWeight = Float32Array | Uint16Array;

/** Bytes per stored element. */
export function bytesPerWeight(dtype: StorageDtype): number {
  return dtype === "float32" ? 4 : 2;
}

/** A perturbation in force for half-stored weights, applied as they are read. */
export interface VirtualPerturbation {
  seed: bigint;
  /** The sum of the pass coefficients applied so far in this step. */
  coeff: number;
  /** The half-stored tensors it applies to (the trainable ones). */
  names: ReadonlySet<string>;
}

/** What `readWeight` needs of a stage. */
export interface WeightSource {
  weights: Map<string, StoredWeight>;
  dtype: StorageDtype;
  virtual?: VirtualPerturbation;
}

/**
 * The uint32 rounding bits of elements start .. start + out.length of tensor `name` for the
 * update of the step with `seed`: Philox4x32-10 words with the z specification's key (the seed)
 * and counter layout (block index, then a name hash), the hash taken of `name + "#rounding"` so
 * that they are independent of z. A pure function, like z: any process regenerates them. The
 * WASM z kernel computes them (`words`) where it runs; `impl: "js"` is the reference.
 */
export function roundingBits(
  seed: bigint,
  name: string,
  start: number,
  out: Uint32Array,
  impl: "auto" | "js" = "auto",
): void {
  const [k0, k1] = seedKey(seed);
  const [h0, h1] = nameHash(`${name}#rounding`);
  const kernel = impl === "js" ? null : perturbKernel();
  if (kernel) {
    kernel.setKey(philoxRoundKeys(k0, k1), h0, h1);
    const piece = kernel.capacity - 16; // a multiple of 4: pieces after the first stay aligned
    for (let pos = 0; pos < out.length; pos += piece) {
      const n = Math.min(piece, out.length - pos);
      out.set(kernel.words(start + pos, n), pos);
    }
    return;
  }
  const words = new Uint32Array(4);
  let i = 0;
  for (let block = Math.floor(start / 4); i < out.length; block++) {
    philox4x32_10(block % 4294967296, Math.floor(block / 4294967296), h0, h1, k0, k1, words);
    for (let lane = i === 0 ? start % 4 : 0; lane < 4 && i < out.length; lane++) {
      out[i++] = words[lane];
    }
  }
}

/**
 * A float32 array in an ArrayBuffer of its own: never inside V8's heap (where a small typed
 * array may live and move), so its address stays valid for OpenBLAS and the helper threads.
 * Every float32 tensor of a store is one.
 */
export function float32Array(n: number): Float32Array {
  return new Float32Array(new ArrayBuffer(n * 4));
}

// ---------------------------------------------------------------------------------------------
// Reading and writing the store

let scratch: Float32Array = new Float32Array(0);

/**
 * A float32 buffer of at least `n` elements outside the heap, shared by the readers below: valid
 * until the next call of `readWeight`, `readRows` or `commitHalf`.
 */
function scratchOf(n: number): Float32Array {
  if (scratch.length < n) scratch = new Float32Array(Math.max(n, Math.ceil(scratch.length * 1.25)));
  return scratch.subarray(0, n);
}

function stored(source: WeightSource, name: string): StoredWeight {
  const w = source.weights.get(name);
  if (!w) throw new Error(`stage does not hold ${name}`);
  return w;
}

/**
 * The float32 values of weight `name` as the forward must see them: a float32 weight's own
 * memory (no copy), or a half weight widened into the shared scratch with the stage's virtual
 * perturbation added. The result is valid until the next read; do not write it.
 */
export function readWeight(source: WeightSource, name: string): Float32Array {
  const w = stored(source, name);
  if (w instanceof Float32Array) return w;
  const out = scratchOf(w.length);
  widen(w, source.dtype as HalfDtype, out);
  addVirtual(source, name, out, 0);
  return out;
}

/**
 * Rows `rows` of a `[R, width]` weight as float32 (perturbed as `readWeight` would), packed
 * `[rows.length, width]` into `out`.
 */
export function readRows(
  source: WeightSource,
  name: string,
  width: number,
  rows: Int32Array,
  out: Float32Array,
): void {
  const w = stored(source, name);
  const R = w.length / width;
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i];
    if (!(r >= 0 && r < R)) throw new RangeError(`${name}: row ${r} not in [0, ${R})`);
    const dst = out.subarray(i * width, (i + 1) * width);
    if (w instanceof Float32Array) {
      dst.set(w.subarray(r * width, (r + 1) * width));
      continue;
    }
    widen(w.subarray(r * width, (r + 1) * width), source.dtype as HalfDtype, dst);
    addVirtual(source, name, dst, r * width);
  }
}

/** Adds the virtual perturbation of `name` (when it has one) to its elements at `start`. */
function addVirtual(source: WeightSource, name: string, data: Float32Array, start: number): void {
  const v = source.virtual;
  if (!v || !v.names.has(name) || v.coeff === 0) return;
  perturb([{ name, data, start }], v.seed, v.coeff);
}

/** Elements of a half tensor updated at a time by `commitHalf`. */
const COMMIT_CHUNK = 1 << 20;

/**
 * Writes a step's update into half-stored weights: for each tensor, `w = SR(float32(float32(keep
 * * w) + float32(c * z)))` with `c = float32(coeff)` (the step's total coefficient: the update's
 * plus whatever virtual perturbation was in force) and SR the stochastic rounding of
 * `narrowStochastic` with `roundingBits`. Works in chunks of COMMIT_CHUNK elements.
 */
export function commitHalf(
  source: WeightSource,
  names: readonly string[],
  seed: bigint,
  coeff: number,
  weightDecay?: WeightDecay,
): void {
  const dtype = source.dtype as HalfDtype;
  const values = new Float32Array(COMMIT_CHUNK);
  const bits = new Uint32Array(COMMIT_CHUNK);
  for (const name of names) {
    const w = stored(source, name);
    if (!(w instanceof Uint16Array)) throw new Error(`commitHalf: ${name} is not half-stored`);
    for (let start = 0; start < w.length; start += COMMIT_CHUNK) {
      const n = Math.min(COMMIT_CHUNK, w.length - start);
      const chunk = w.subarray(start, start + n), v = values.subarray(0, n);
      const b = bits.subarray(0, n);
      widen(chunk, dtype, v);
      perturb([{ name, data: v, start }], seed, coeff, { weightDecay });
      roundingBits(seed, name, start, b);
      narrowStochastic(v, dtype, b, chunk);
    }
  }
}
