/**
 * A helper thread of `./mod.ts`: it makes its own z kernel and head lane, says it is ready, then
 * sleeps on its control word and runs each command the main thread posts.
 */
import { workerData } from "node:worker_threads";
import { Command, protocol as p } from "./mod.ts";
import { createZKernel } from "../rng/wasm/mod.ts";
import { runPerturbCommand } from "../dpzo/perturbation.ts";
import { ATTENTION_JOB, createLane, decodeJob, HEAD_JOB } from "../tensor/lane.ts";
import { GEMM_JOB, gemmBlocks, openSgemm } from "../tensor/sgemm.ts";

const { control, args, error, counter } = workerData as {
  control: Int32Array;
  args: Float64Array;
  error: Uint8Array;
  counter: Int32Array;
};

function fail(e: unknown): void {
  const bytes = new TextEncoder().encode(e instanceof Error ? e.message : String(e));
  const n = Math.min(bytes.length, p.ERROR_CAPACITY);
  error.set(bytes.subarray(0, n));
  control[p.ERROR_BYTES] = n;
  Atomics.store(control, p.STATE, p.FAILED);
  Atomics.notify(control, p.STATE);
}

let started = false;
try {
  const kernel = createZKernel();
  if (kernel === null) throw new Error("no WebAssembly SIMD");
  const lane = createLane();
  Atomics.store(control, p.STATE, p.READY);
  Atomics.notify(control, p.STATE);
  started = true;
  for (;;) {
    // Sleep on the value just read: reading it twice would let a post land in between and
    // leave the thread asleep on WORKING, with the notify already spent (a deadlock).
    for (let state = Atomics.load(control, p.STATE); state !== p.WORKING;) {
      Atomics.wait(control, p.STATE, state);
      state = Atomics.load(control, p.STATE);
    }
    try {
      const command = control[p.COMMAND];
      if (command === Command.Perturb) runPerturbCommand(kernel, args, counter);
      else if (command === Command.GemmBlocks) {
        const { job, library } = decodeJob(GEMM_JOB, args);
        gemmBlocks(job, counter, openSgemm(library));
      } else if (command === Command.HeadBlocks) {
        const { job, library } = decodeJob(HEAD_JOB, args);
        lane.headBlocks(job, counter, openSgemm(library));
      } else if (command === Command.AttendHeads) {
        const { job, library } = decodeJob(ATTENTION_JOB, args);
        lane.attendHeads(job, counter, openSgemm(library));
      } else if (command === Command.Attention) {
        const [q, k, v, keyMask, out] = [0, 1, 2, 3, 4].map((i) => BigInt(args[i]));
        const [B, S, H, hd, bFrom, bTo] = args.subarray(5, 11);
        lane.attendRows({ q, k, v, keyMask, out }, { B, S, H, hd }, bFrom, bTo);
      } else throw new Error(`unknown command ${command}`);
      Atomics.store(control, p.STATE, p.DONE);
      Atomics.notify(control, p.STATE);
    } catch (e) {
      fail(e);
    }
  }
} catch (e) {
  if (!started) fail(e);
  else throw e;
}
