/**
 * The step time of a plan, estimated from a measurement on this machine: the products of one
 * decoder layer at the model's width, and the perturbation pass.
 *
 * Products. A decoder layer's matMuls over N = micro-batch x seq-len tokens are q, k, v and
 * out_proj ([D, D] x [D, N]), fc1 ([F, D] x [D, N]) and fc2 ([D, F] x [F, N]). The native matMul
 * (src/tensor/blas.ts) cuts each into blocks of `gemmRows(M)` rows, one OpenBLAS call per block
 * on one thread, the threads of src/cores taking blocks in turn. The measurement makes exactly
 * those calls, on every thread, but only one block of each product per thread (all reading one
 * block of the weight: the memory stays under 0.2 GB even at OPT-66B's width) and at most
 * MEASURE_COLUMNS of the N columns, then scales by blocks and columns (an sgemm's time is about
 * linear in both at these sizes); the fastest of up to three runs counts. About 30 GFLOP a thread at OPT-66B's width: a second or so. Without OpenBLAS the same blocks go through the WASM matMul,
 * on one thread. Attention's products (scores and context, 4 B S^2 D flops) and the LM head's
 * (2 V E flops a scored position) are counted at the measured rate; the element-wise work
 * (LayerNorm, softmax, bias) and the network are not counted.
 *
 * Perturbation. The faster of two passes of `perturb()` (src/dpzo/perturbation.ts) on PERTURB_FLOATS floats,
 * scaled by the stage's trainable parameters; three passes a step. With half storage each pass
 * also widens or rounds: not measured here, so the figure is a lower bound there.
 *
 * The step: two forward passes, each pushing a group's micro-batches through the K stages
 * (pipelined: the sum of the stages' times for the first micro-batch, then the slowest stage's
 * for each further one), and three perturbation passes (every stage at once: the largest).
 */
import * as tf from "@tensorflow/tfjs-core";
import type { OptConfig } from "../src/model/config.ts";
import { matMulIdentity, nativeMatMul, shareBlasWork } from "../src/tensor/blas.ts";
import { GEMM_JOB, gemmBlocks, type GemmJob, gemmRows } from "../src/tensor/sgemm.ts";
import { addressOf, Command, helpers } from "../src/cores/mod.ts";
import { perturb } from "../src/dpzo/perturbation.ts";

/** Columns of an activation at most in the measurement (the rest is scaled). */
export const MEASURE_COLUMNS = 512;
/** Runs of each product at most, and the seconds after which no further run starts. */
const REPEATS = 3, MEASURE_S = 0.5;
/** Floats of the perturbation pass' measurement (128 MiB). */
export const PERTURB_FLOATS = 1 << 25;

/** What was measured on this machine, at one model width and micro-batch. */
export interface MachineSpeed {
  /** Threads of this process (src/cores) that took part. */
  threads: number;
  /** How the matMuls ran (src/tensor/blas.ts `matMulIdentity`). */
  matmul: string;
  /** Tokens of the micro-batch measured (micro-batch x seq-len). */
  tokens: number;
  /** One decoder layer's six projections on those tokens. */
  layer_products_s: number;
  /** Their rate. */
  sgemm_gflop_per_s: number;
  /** The rate of the largest one (fc1), used for the LM head. */
  fc1_gflop_per_s: number;
  /** The perturbation pass' rate. */
  perturb_params_per_s: number;
  /** Wall time of the measurement itself. */
  measure_s: number;
}

/** Seconds of `[M, K] x [K, N]` as the native matMul runs it (see the module comment). */
function timeProduct(M: number, K: number, N: number, buffers: Buffers, threads: number): number {
  const rows = gemmRows(M), parts = Math.ceil(M / rows);
  const cols = Math.min(N, MEASURE_COLUMNS);
  const blocks = Math.min(parts, threads);
  const a = buffers.take("a", rows * K), b = buffers.take("b", K * cols);
  const c = buffers.take("c", blocks * rows * cols);
  let run: () => void, done = () => {};
  if (nativeMatMul()?.enabled) {
    const job: GemmJob = {
      transA: 0,
      transB: 0,
      M: rows,
      N: cols,
      K,
      rows,
      batch: blocks,
      a: addressOf(a),
      aStride: 0,
      lda: K,
      b: addressOf(b),
      bStride: 0,
      ldb: cols,
      c: addressOf(c),
    };
    run = () =>
      shareBlasWork(Command.GemmBlocks, GEMM_JOB, job, (n, gemm) => gemmBlocks(job, n, gemm));
  } else {
    const ta = tf.tensor2d(a, [rows, K]), tb = tf.tensor2d(b, [K, cols]);
    tf.matMul(ta, tb).dispose(); // warm: XNNPACK packs b
    run = () => {
      for (let i = 0; i < blocks; i++) tf.matMul(ta, tb).dispose();
    };
    done = () => tf.dispose([ta, tb]);
  }
  // The fastest of up to REPEATS runs (other processes share the cores), within MEASURE_S.
  let seconds = Infinity, spent = 0;
  try {
    for (let i = 0; i < REPEATS && (i === 0 || spent < MEASURE_S); i++) {
      const t0 = performance.now();
      run();
      const t = (performance.now() - t0) / 1000;
      seconds = Math.min(seconds, t);
      spent += t;
    }
  } finally {
    done();
  }
  return seconds * (parts / blocks) * (N / cols);
}

/** Float32 buffers reused across the products (grown to the largest, filled: pages touched). */
class Buffers {
  #bufs = new Map<string, Float32Array>();
  take(name: string, n: number): Float32Array {
    let buf = this.#bufs.get(name);
    if (!buf || buf.length < n) {
      buf = new Float32Array(n).fill(0.01);
      this.#bufs.set(name, buf);
    }
    return buf.subarray(0, n);
  }
}

/**
 * Measures this machine at the model's width for micro-batches of `tokens` tokens (the backend
 * must be started: the native matMul is used when src/tensor/blas.ts enabled it).
 */
export function measureMachine(model: OptConfig, tokens: number): MachineSpeed {
  const t0 = performance.now();
  const { hiddenSize: D, ffnDim: F } = model;
  const threads = helpers().length + 1;
  const buffers = new Buffers();
  timeProduct(D, D, tokens, buffers, threads); // warm: every thread's OpenBLAS buffers
  const dd = timeProduct(D, D, tokens, buffers, threads);
  const fc1 = timeProduct(F, D, tokens, buffers, threads);
  const fc2 = timeProduct(D, F, tokens, buffers, threads);
  const layer = 4 * dd + fc1 + fc2;
  const flops = 2 * tokens * (4 * D * D + 2 * F * D);
  const data = new Float32Array(PERTURB_FLOATS).fill(0.01);
  const tensors = [{ name: "plan.measurement", data }];
  perturb([{ name: "plan.warm", data: data.subarray(0, 1 << 20) }], 1n, 1e-3);
  let perturbS = Infinity;
  for (let i = 0; i < 2; i++) {
    const p0 = performance.now();
    perturb(tensors, 1n, i === 0 ? 1e-3 : -1e-3);
    perturbS = Math.min(perturbS, (performance.now() - p0) / 1000);
  }
  return {
    threads,
    matmul: matMulIdentity(),
    tokens,
    layer_products_s: layer,
    sgemm_gflop_per_s: flops / layer / 1e9,
    fc1_gflop_per_s: (2 * tokens * F * D) / fc1 / 1e9,
    perturb_params_per_s: PERTURB_FLOATS / perturbS,
    measure_s: (performance.now() - t0) / 1000,
  };
}

/** The estimated time of a step of a plan (see the module comment). */
export interface StepTimeEstimate {
  step_s: number;
  /** Both forward passes of the step (2K with K directions). */
  forward_s: number;
  /** The three perturbation passes (4K - 1 with K directions). */
  perturbation_s: number;
  /** One micro-batch through each stage. */
  stage_micro_batch_s: number[];
  /** One decoder layer (products and attention), one micro-batch. */
  layer_s: number;
  /** The LM head on one micro-batch's scored positions. */
  head_s: number;
  measured: MachineSpeed;
}

/** What the estimate needs of a plan. */
export interface StepShape {
  /** Decoder layers per stage, and which stage holds the head. */
  layers: number[];
  /** Trainable parameters per stage (perturbed each pass). */
  trainable: number[];
  microBatchesPerGroup: number;
  microBatch: number;
  seqLen: number;
  /** Positions of a micro-batch that go through the LM head. */
  headPositions: number;
  /** Directions per step (train.directions): 2K forwards, 4K - 1 perturbation passes. */
  directions?: number;
}

export function estimateStepTime(
  model: OptConfig,
  shape: StepShape,
  speed: MachineSpeed,
): StepTimeEstimate {
  const { hiddenSize: D, embedDim: E, vocabSize: V } = model;
  const attentionFlops = 4 * shape.microBatch * shape.seqLen ** 2 * D;
  const layer = speed.layer_products_s + attentionFlops / (speed.sgemm_gflop_per_s * 1e9);
  const head = (2 * V * E * shape.headPositions) / (speed.fc1_gflop_per_s * 1e9);
  const K = shape.layers.length;
  const stage = shape.layers.map((l, k) => l * layer + (k === K - 1 ? head : 0));
  const pass = stage.reduce((a, b) => a + b, 0) +
    (shape.microBatchesPerGroup - 1) * Math.max(...stage);
  const dirs = shape.directions ?? 1;
  const forward = 2 * dirs * pass;
  const perturbation = ((4 * dirs - 1) * Math.max(...shape.trainable)) /
    speed.perturb_params_per_s;
  return {
    step_s: forward + perturbation,
    forward_s: forward,
    perturbation_s: perturbation,
    stage_micro_batch_s: stage,
    layer_s: layer,
    head_s: head,
    measured: speed,
  };
}
