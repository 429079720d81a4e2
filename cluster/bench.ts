/**
 * `dpzo bench`: the cost of a DP-ZO step on random tokens, the same work as
 * `../shared/bench/torch_mezo_step.py` (three in-place passes over every parameter and two
 * forward passes with per-example losses over the full vocabulary), so the two can be
 * compared side by side. `targetTokens` limits the loss to the last N positions of each row
 * (the task-like case: only answer tokens carry a loss).
 */
import * as tf from "@tensorflow/tfjs-core";
import { openCheckpoint } from "../src/model/checkpoint.ts";
import type { OptConfig } from "../src/model/config.ts";
import { stageParameters, wholeModel } from "../src/model/opt.ts";
import { float32Array } from "../src/model/weights.ts";
import { loadStage } from "../src/model/load.ts";
import { bytesPerWeight, type StorageDtype } from "../src/model/weights.ts";
import { applyPass, createStageWorker, forwardStage } from "./worker.ts";
import type { ForwardRequest } from "./protocol.ts";
import { matMulIdentity, matMulRaw, nativeMatMul } from "../src/tensor/blas.ts";

export interface BenchOptions {
  model: string;
  batch: number;
  seqLen: number;
  steps: number;
  targetTokens?: number;
  warmup?: number;
  /** How the weights are stored (default float32). */
  dtype?: StorageDtype;
}

export interface BenchResult {
  model: string;
  batch: number;
  seq_len: number;
  target_tokens: number;
  params: number;
  dtype: StorageDtype;
  weight_bytes_f32: number;
  /** Bytes of the weights as stored (2 per weight in half precision). */
  stored_weight_bytes: number;
  forward_s: number;
  perturb_pass_s: number;
  step_s: number;
  perturb_params_per_s: number;
  peak_rss_bytes: number;
  /** RSS of the process before the weights were loaded (runtime, code, backend). */
  rss_before_load_bytes: number;
  /** Size of the WASM backend's heap at the end (weights, activations, allocator slack). */
  wasm_heap_bytes?: number;
  /**
   * The most tensor bytes live at once in a forward beyond those live before it (hidden states,
   * q/k/v, the LM head's input): the activations, without allocator slack (`livePeakBytes`).
   */
  activation_peak_bytes: number;
  /** How matMuls are computed (src/tensor/blas.ts `matMulIdentity`). */
  matmul: string;
  /** Floating-point operations of one forward (`forwardFlops`), in 1e9. */
  forward_gflop: number;
  /** forward_gflop / forward_s. */
  forward_gflops: number;
  /**
   * What OpenBLAS reaches on this machine in this run, through the same path as the forward's
   * matMuls (blocks of rows taken in turn by every thread, one OpenBLAS thread per call): the
   * best of three [2048, 2048] x [2048, 1024] products, in GFLOP/s. Absent without OpenBLAS.
   */
  sgemm_peak_gflops?: number;
}

/**
 * Floating-point operations of a forward of B rows of S tokens with the LM head at P positions:
 * 2 per multiply-add of every linear layer (N = B S tokens), of attention's two products (the
 * whole S x S score matrix of each row and head, as computed) and of the head's P x V logits.
 */
export function forwardFlops(c: OptConfig, B: number, S: number, P: number): number {
  const N = B * S, D = c.hiddenSize, F = c.ffnDim, L = c.numLayers;
  const linears = L * (4 * D * D + 2 * D * F) + (c.hasProjections ? 2 * D * c.embedDim : 0);
  return 2 * N * linears + L * 4 * B * S * S * D + 2 * P * c.vocabSize * c.embedDim;
}

/**
 * The most bytes of heap tensors live at once while `f` runs, beyond those live before it:
 * sampled at every tensor allocation (tf.profile samples only at kernel runs, and misses the
 * products OpenBLAS writes straight from the weight store).
 */
export function livePeakBytes(f: () => void): number {
  const engine = tf.engine() as unknown as {
    state: { numBytes: number };
    trackTensor(...args: unknown[]): unknown;
  };
  const track = engine.trackTensor;
  const before = engine.state.numBytes;
  let peak = before;
  engine.trackTensor = (...args: unknown[]) => {
    const r = track.apply(engine, args);
    peak = Math.max(peak, engine.state.numBytes);
    return r;
  };
  try {
    f();
  } finally {
    engine.trackTensor = track;
  }
  return peak - before;
}

/** The sgemm peak of `BenchResult.sgemm_peak_gflops`, or undefined without OpenBLAS. */
export function sgemmPeakGflops(): number | undefined {
  if (!nativeMatMul()?.enabled) return undefined;
  const M = 2048, K = 2048, N = 1024;
  const a = float32Array(M * K).fill(0.5);
  const x = tf.fill([K, N], 0.25) as tf.Tensor2D;
  try {
    let best = Infinity;
    for (let r = 0; r < 4; r++) {
      const t0 = performance.now();
      matMulRaw(a, M, K, x)!.dispose();
      if (r > 0) best = Math.min(best, (performance.now() - t0) / 1000); // the first warms up
    }
    return (2 * M * N * K) / best / 1e9;
  } finally {
    x.dispose();
  }
}

/** Peak resident set size of this process (VmHWM on Linux, else the current RSS). */
export function peakRssBytes(): number {
  try {
    const m = Deno.readTextFileSync("/proc/self/status").match(/VmHWM:\s+(\d+) kB/);
    if (m) return Number(m[1]) * 1024;
  } catch { /* not Linux */ }
  return Deno.memoryUsage().rss;
}

function wasmHeapBytes(): number | undefined {
  const b = tf.backend() as unknown as { wasm?: { HEAPU8?: Uint8Array } };
  return b.wasm?.HEAPU8?.length;
}

function randomRequest(B: number, S: number, vocab: number, targetTokens: number): ForwardRequest {
  const ids = new Int32Array(B * S);
  for (let i = 0; i < ids.length; i++) ids[i] = 4 + Math.floor(Math.random() * (vocab - 4));
  const pos: number[] = [], tok: number[] = [], score: number[] = [];
  for (let b = 0; b < B; b++) {
    for (let s = Math.max(0, S - 1 - targetTokens); s < S - 1; s++) {
      pos.push(b * S + s);
      tok.push(ids[b * S + s + 1]);
      score.push(b);
    }
  }
  return {
    step: 0,
    micro: 0,
    sign: 0,
    batchSize: B,
    seqLen: S,
    ids,
    mask: new Int32Array(B * S).fill(1),
    pairPos: Int32Array.from(pos),
    pairTok: Int32Array.from(tok),
    pairScore: Int32Array.from(score),
    numScores: B,
  };
}

export async function benchStep(
  opts: BenchOptions,
  log: (l: string) => void = () => {},
): Promise<BenchResult> {
  const rssBeforeLoad = Deno.memoryUsage().rss;
  const ckpt = await openCheckpoint(opts.model);
  const dtype = opts.dtype ?? "float32";
  const stage = await loadStage(ckpt, wholeModel(ckpt.config), dtype);
  const specs = stageParameters(ckpt.config, stage.range);
  const params = specs.reduce((n, s) => n + s.shape.reduce((a, b) => a * b, 1), 0);
  const worker = createStageWorker(stage, specs.map((s) => s.name));
  const targets = opts.targetTokens ?? opts.seqLen - 1;
  const req = randomRequest(opts.batch, opts.seqLen, ckpt.config.vocabSize, targets);
  const seed = 0x5eedn;
  const time = (f: () => void) => {
    const t0 = performance.now();
    f();
    return (performance.now() - t0) / 1000;
  };
  const step = () => {
    let fwd = 0, pert = 0;
    pert += time(() => applyPass(worker, seed, 1e-3, false));
    fwd += time(() => forwardStage(worker, req));
    pert += time(() => applyPass(worker, seed, -2e-3, false));
    fwd += time(() => forwardStage(worker, req));
    pert += time(() => applyPass(worker, seed, 1e-3, true));
    return { fwd: fwd / 2, pert: pert / 3 };
  };
  for (let i = 0; i < (opts.warmup ?? 1); i++) step();
  let fwd = 0, pert = 0, total = 0;
  for (let i = 0; i < opts.steps; i++) {
    const t0 = performance.now();
    const r = step();
    total += (performance.now() - t0) / 1000;
    fwd += r.fwd;
    pert += r.pert;
    log(`step ${i + 1}/${opts.steps}: ${((performance.now() - t0) / 1000).toFixed(3)} s`);
  }
  const activationPeak = livePeakBytes(() => forwardStage(worker, req));
  const positions = new Set(req.pairPos).size;
  const gflop = forwardFlops(ckpt.config, opts.batch, opts.seqLen, positions) / 1e9;
  return {
    model: opts.model,
    batch: opts.batch,
    seq_len: opts.seqLen,
    target_tokens: targets,
    params,
    dtype,
    weight_bytes_f32: params * 4,
    stored_weight_bytes: params * bytesPerWeight(dtype),
    forward_s: fwd / opts.steps,
    perturb_pass_s: pert / opts.steps,
    step_s: total / opts.steps,
    perturb_params_per_s: params / (pert / opts.steps),
    peak_rss_bytes: peakRssBytes(),
    rss_before_load_bytes: rssBeforeLoad,
    wasm_heap_bytes: wasmHeapBytes(),
    activation_peak_bytes: activationPeak,
    matmul: matMulIdentity(),
    forward_gflop: gflop,
    forward_gflops: gflop / (fwd / opts.steps),
    sgemm_peak_gflops: sgemmPeakGflops(),
  };
}
