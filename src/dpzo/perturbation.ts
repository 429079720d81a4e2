/**
 * The in-place perturbation pass of DP-ZO: `theta += coeff * z(seed)` over every trainable
 * tensor a stage holds, with no second copy of the weights (z is generated in chunks into one
 * reusable scratch buffer of CHUNK floats).
 *
 * The three passes of a step use it as: `perturb(t, s, phi)`, `perturb(t, s, -2 * phi)`, and the
 * fused restore + update `perturb(t, s, phi - lr * ghat, {weightDecay})`.
 *
 * Float32 semantics (deterministic, so a replay performing the same passes in the same order with
 * the same coefficients is bit-identical): with `c = float32(coeff)` and `z_i` the float32 value
 * of `z(seed, name, i)`,
 *   - without decay:  `theta_i = float32(theta_i + float32(c * z_i))`
 *   - with decay:     `theta_i = float32(float32(keep * theta_i) + float32(c * z_i))`,
 *     `keep = float32(1 - lr * decay)` (binary64 `1 - lr * decay`, then rounded),
 * i.e. IEEE float32 multiply and add, no fused multiply-add. (In JS the binary64 product of two
 * float32 values is exact and binary64 add then float32 rounding equals the float32 add, so this
 * is what a float32 SIMD or GPU kernel computes too.)
 *
 * Weight decay follows MeZO (`theta -= lr * wd * theta` in the update, not on biases and layer
 * norms: see `mezoDecayApplies`). It multiplies the tensor as it is when the pass runs, i.e. the
 * still-perturbed `theta - phi z` in the fused pass; the difference from decaying the unperturbed
 * weights is `lr * decay * phi * z`, below float32 resolution for usual settings.
 *
 * Implementations: by default the WebAssembly SIMD kernel (`src/rng/wasm`) runs the pass on every
 * thread of `src/cores` (the tensors are cut into chunks of WASM_CHUNK elements, which the threads
 * take in turn; z is counter-based, so the bits do not depend on who takes which), chunk by
 * chunk: the chunk of theta is copied into the kernel's memory, z is
 * generated there and the update is done with f32x4 IEEE multiply and add (no FMA; the same
 * two or three float32 roundings as above), and the chunk is copied back. Where WebAssembly SIMD
 * is unavailable (or with `impl: "js"`) the JS path generates z with the reference `fillZKeyed`
 * into a CHUNK scratch and updates in a JS loop. Both give the same bits (tested); NaN payloads
 * are the only thing not pinned.
 *
 * Several passes in one sweep (`perturbPasses`, the K updates of a step of K directions): the
 * tensors are cut into pieces of FUSED_PIECE elements and every pass runs over a piece before the
 * next piece, so the weights stream through memory once while the piece stays in cache. Each
 * element still receives the passes in order with the same float32 operations, so the result is
 * bit for bit that of the passes one after the other (tested): replay may use either.
 *
 * Tied weights: pass one buffer once, under its canonical name (OPT's `lm_head.weight` is
 * `model.decoder.embed_tokens.weight`); two stages each holding a copy both pass it, under that
 * name, and stay equal.
 */

import { fillZKeyed, nameHash, seedKey } from "../rng/z.ts";
import { philoxRoundKeys } from "../rng/philox.ts";
import { createZKernel, type ZKernel } from "../rng/wasm/mod.ts";
import { addressOf, ARG_DOUBLES, Command, floatsAt, helpers, shareWork } from "../cores/mod.ts";

/** Elements of z generated per chunk (a multiple of 4: chunks start on Philox block bounds). */
export const CHUNK = 4096;

/** Elements per chunk of the WASM path (a multiple of 4, at most the kernel's capacity). */
export const WASM_CHUNK = 16384;

/**
 * A named trainable tensor; `data` is its row-major float32 storage, updated in place, or a
 * piece of it: elements `start` .. `start + data.length` of the tensor (`start` defaults to 0;
 * a multiple of 4 keeps the pass on the WASM kernel).
 */
export interface NamedTensor {
  name: string;
  data: Float32Array;
  start?: number;
}

/** MeZO-style decoupled weight decay applied in the update pass. */
export interface WeightDecay {
  lr: number;
  decay: number;
  /** Whether a parameter (by name) is decayed; see `mezoDecayApplies`. */
  appliesTo(name: string): boolean;
}

/** Options of `perturb`. */
export interface PerturbOptions {
  weightDecay?: WeightDecay;
  /**
   * Implementation: "auto" (default: WASM when available, else JS), "wasm" (throws when
   * WebAssembly SIMD is unavailable) or "js" (the reference path). All give the same bits.
   */
  impl?: "auto" | "wasm" | "js";
}

/** MeZO's rule: decay every parameter except biases and layer norms. */
export function mezoDecayApplies(name: string): boolean {
  const n = name.toLowerCase();
  return !n.includes("bias") && !n.includes("layer_norm") && !n.includes("layernorm");
}

const scratch = new Float32Array(CHUNK);

let kernel: ZKernel | null | undefined;

/** The shared z kernel of this module (created on first use), or null without WASM SIMD. */
export function perturbKernel(): ZKernel | null {
  if (kernel === undefined) kernel = createZKernel();
  return kernel;
}

/** `theta += coeff * z(seed)` in place over `tensors` (with optional decay); see module doc. */
export function perturb(
  tensors: readonly NamedTensor[],
  seed: bigint,
  coeff: number,
  opts: PerturbOptions = {},
): void {
  if (!Number.isFinite(coeff)) {
    throw new RangeError(`perturb: coeff must be a finite number, got ${coeff}`);
  }
  const wd = opts.weightDecay;
  let keep = 1;
  if (wd !== undefined) {
    if (!Number.isFinite(wd.lr) || !Number.isFinite(wd.decay) || wd.decay < 0) {
      throw new RangeError(
        `perturb: weightDecay needs finite lr and decay >= 0, got lr=${wd.lr} decay=${wd.decay}`,
      );
    }
    keep = Math.fround(1 - wd.lr * wd.decay);
  }
  // The kernel works on whole Philox blocks of 4 elements: a piece must start on one.
  const aligned = tensors.every((t) => (t.start ?? 0) % 4 === 0);
  const impl = opts.impl ?? (aligned ? "auto" : "js");
  if (impl === "wasm" && !aligned) {
    throw new RangeError(`perturb: impl "wasm" needs every piece to start at a multiple of 4`);
  }
  const k = impl === "js" ? null : perturbKernel();
  if (impl === "wasm" && k === null) {
    throw new Error(`perturb: impl "wasm" requested but WebAssembly SIMD is unavailable`);
  }
  const keys = philoxRoundKeys(...seedKey(seed));
  const c = Math.fround(coeff);
  const seen = new Set<string>();
  for (const { name } of tensors) {
    if (seen.has(name)) {
      throw new Error(`perturb: tensor "${name}" listed twice; pass each buffer once`);
    }
    seen.add(name);
  }
  const decayedOf = (name: string) => wd !== undefined && keep !== 1 && wd.appliesTo(name);
  if (k !== null) {
    perturbOnCores(k, tensors, keys, c, keep, decayedOf);
    return;
  }
  for (const { name, data, start: first = 0 } of tensors) {
    const [h0, h1] = nameHash(name);
    const decayed = decayedOf(name);
    const n = data.length;
    for (let start = 0; start < n; start += CHUNK) {
      const len = Math.min(CHUNK, n - start);
      const z = len === CHUNK ? scratch : scratch.subarray(0, len);
      fillZKeyed(z, keys, h0, h1, first + start);
      if (decayed) {
        for (let j = 0; j < len; j++) {
          data[start + j] = Math.fround(keep * data[start + j]) + Math.fround(c * z[j]);
        }
      } else {
        for (let j = 0; j < len; j++) {
          data[start + j] = data[start + j] + Math.fround(c * z[j]);
        }
      }
    }
  }
}

/** A chunk of a tensor: elements start .. start + data.length. */
interface Segment {
  data: Float32Array;
  start: number;
  h0: number;
  h1: number;
  decayed: boolean;
}

/** Arguments of Command.Perturb: c, keep, 20 round keys, the count, then the segments. */
const HEADER = 23, SEGMENT_DOUBLES = 6;
const MAX_SEGMENTS = Math.floor((ARG_DOUBLES - HEADER) / SEGMENT_DOUBLES);

/**
 * The WASM pass over `segments` on one thread's kernel, taking them in turn from the shared
 * work counter (src/cores `shareWork`) with the other threads: each segment is one chunk of
 * at most WASM_CHUNK elements, computed the same way on any thread.
 */
function runSegments(
  k: ZKernel,
  keys: Int32Array,
  c: number,
  keep: number,
  count: number,
  segmentAt: (i: number) => Segment,
  counter: Int32Array,
): void {
  for (let i = Atomics.add(counter, 0, 1); i < count; i = Atomics.add(counter, 0, 1)) {
    const { data, start, h0, h1, decayed } = segmentAt(i);
    k.setKey(keys, h0, h1);
    k.perturb(data, start, c, decayed ? keep : undefined);
  }
}

/**
 * The pass on every thread: every tensor cut in chunks of WASM_CHUNK elements, which the
 * threads take in turn (a thread that runs slower takes fewer; the bits do not depend on who
 * takes what).
 */
function perturbOnCores(
  k: ZKernel,
  tensors: readonly NamedTensor[],
  keys: Int32Array,
  c: number,
  keep: number,
  decayedOf: (name: string) => boolean,
): void {
  const pool = helpers();
  const chunks: Segment[] = [];
  for (const { name, data, start = 0 } of tensors) {
    const [h0, h1] = nameHash(name);
    const decayed = decayedOf(name);
    for (let lo = 0; lo < data.length; lo += WASM_CHUNK) {
      const hi = Math.min(data.length, lo + WASM_CHUNK);
      chunks.push({ data: data.subarray(lo, hi), start: start + lo, h0, h1, decayed });
    }
  }
  for (let from = 0; from < chunks.length; from += MAX_SEGMENTS) {
    const batch = chunks.slice(from, from + MAX_SEGMENTS);
    // A single chunk is not worth a helper's wake-up.
    shareWork(
      batch.length > 1 ? pool : [],
      Command.Perturb,
      (args) => encodeSegments(args, keys, c, keep, batch),
      (counter) => runSegments(k, keys, c, keep, batch.length, (i) => batch[i], counter),
    );
  }
}

function encodeSegments(
  args: Float64Array,
  keys: Int32Array,
  c: number,
  keep: number,
  segments: readonly Segment[],
): void {
  args[0] = c;
  args[1] = keep;
  for (let i = 0; i < 20; i++) args[2 + i] = keys[i];
  args[22] = segments.length;
  segments.forEach((s, i) => {
    const o = HEADER + i * SEGMENT_DOUBLES;
    args[o] = Number(addressOf(s.data));
    args[o + 1] = s.data.length;
    args[o + 2] = s.start;
    args[o + 3] = s.h0;
    args[o + 4] = s.h1;
    args[o + 5] = s.decayed ? 1 : 0;
  });
}

/** A helper thread's side of Command.Perturb (src/cores/helper.ts). */
export function runPerturbCommand(k: ZKernel, args: Float64Array, counter: Int32Array): void {
  const keys = Int32Array.from(args.subarray(2, 22));
  // Segments are read when taken: most are the other threads'.
  const segmentAt = (i: number): Segment => {
    const o = HEADER + i * SEGMENT_DOUBLES;
    return {
      data: floatsAt(BigInt(args[o]), args[o + 1]),
      start: args[o + 2],
      h0: args[o + 3],
      h1: args[o + 4],
      decayed: args[o + 5] === 1,
    };
  };
  runSegments(k, keys, args[0], args[1], args[22], segmentAt, counter);
}

/** Elements of a piece in `perturbPasses` (1 MiB of float32; a multiple of WASM_CHUNK). */
export const FUSED_PIECE = 16 * WASM_CHUNK;

/** One pass of `perturbPasses`: theta += coeff z(seed), with optional decay. */
export interface Pass {
  seed: bigint;
  coeff: number;
  weightDecay?: WeightDecay;
}

/**
 * The passes `passes`, in order, over `tensors`, in one sweep over memory (module doc): the same
 * bits as `perturb` called once per pass.
 */
export function perturbPasses(
  tensors: readonly NamedTensor[],
  passes: readonly Pass[],
  opts: Omit<PerturbOptions, "weightDecay"> = {},
): void {
  if (passes.length === 1 || tensors.length === 0) {
    for (const p of passes) {
      perturb(tensors, p.seed, p.coeff, { ...opts, weightDecay: p.weightDecay });
    }
    return;
  }
  // Groups of pieces of at most FUSED_PIECE elements in all, no tensor twice in a group.
  const groups: NamedTensor[][] = [];
  let group: NamedTensor[] = [], size = 0;
  const flush = () => {
    if (group.length) groups.push(group);
    group = [];
    size = 0;
  };
  for (const t of tensors) {
    for (let lo = 0; lo < t.data.length; lo += FUSED_PIECE) {
      const piece = t.data.subarray(lo, Math.min(t.data.length, lo + FUSED_PIECE));
      if (size + piece.length > FUSED_PIECE || group.some((g) => g.name === t.name)) flush();
      group.push({ name: t.name, data: piece, start: (t.start ?? 0) + lo });
      size += piece.length;
    }
  }
  flush();
  for (const g of groups) {
    for (const p of passes) perturb(g, p.seed, p.coeff, { ...opts, weightDecay: p.weightDecay });
  }
}
