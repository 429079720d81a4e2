/**
 * The machine's other cores, for the work that TensorFlow.js' WASM backend would run on one
 * thread: the perturbation pass (src/dpzo/perturbation.ts), the matMuls (src/tensor/blas.ts),
 * the LM head (src/tensor/head.ts) and attention (src/tensor/fused.ts). OpenBLAS runs each of
 * its calls on the thread that makes it; these threads are all the parallelism there is.
 *
 * Each helper is a `node:worker_threads` Worker (unref'd, so it never keeps a process alive)
 * that sleeps on a shared control word (`Atomics.wait`). The main thread writes a command and
 * its arguments into the helper's shared argument block, wakes it, does its own share of the
 * work, and then waits for it: the calls stay synchronous, no event loop turn is needed.
 *
 * Helpers work on memory the main thread owns (the weights in the WASM heap) through raw
 * pointers (`Deno.UnsafePointerView`), and make OpenBLAS calls of their own (src/tensor/sgemm.ts),
 * so this needs the FFI permission (`--allow-ffi`, which the native matMul needs too). A command's
 * parts are taken in turn by every thread from a shared counter (`shareWork`), so a slower core
 * takes fewer. Work is only ever cut on boundaries that do not change the result: a step
 * computes the same bits on 1 thread or 16 (tested).
 *
 * `DPZO_THREADS` sets the number of threads, the main one included: unset, every core
 * (`navigator.hardwareConcurrency`, at most MAX_THREADS); `1` runs everything on the main
 * thread. Without the FFI permission it is 1.
 */
import { Worker } from "node:worker_threads";

/** The most threads used, whatever the machine has. */
export const MAX_THREADS = 16;

/** Doubles in each helper's argument block. */
export const ARG_DOUBLES = 1 << 14;

/** Commands a helper runs (see ./helper.ts). */
export const Command = {
  Perturb: 1,
  Attention: 3,
  HeadBlocks: 4,
  AttendHeads: 5,
  GemmBlocks: 6,
} as const;

// Control words (int32) of a helper.
const STATE = 0, COMMAND = 1, ERROR_BYTES = 2;
const IDLE = 0, WORKING = 1, DONE = 2, FAILED = 3, READY = 4;
/** Bytes for a helper's error message. */
const ERROR_CAPACITY = 4096;
/** How long to wait for a helper to start before running without it. */
const START_TIMEOUT_MS = 20_000;
/**
 * How long a command may take before the helper counts as dead (a blocked main thread cannot
 * see a Worker's exit event). Commands take milliseconds to seconds: a perturbation pass over a
 * 10 GB stage is about 30 s.
 */
const ANSWER_TIMEOUT_MS = 1_200_000;
/** How long `wait` polls before it sleeps. */
const SPIN_MS = 0.2;

/** One helper thread, as the main thread sees it. */
export interface Helper {
  /** The command's arguments: write them, then `post`. */
  readonly args: Float64Array;
  /** Wakes the helper on `command` (the arguments are already in `args`). */
  post(command: number): void;
  /** Waits until the posted command is done; throws the helper's error. */
  wait(): void;
}

let pool: Helper[] | undefined;
let why = "";

/**
 * The counter every thread takes a command's parts from (`Atomics.add`), so that a slower
 * thread (or core) takes fewer; `shareWork` resets it, helpers get it as `workerData.counter`.
 */
const shared = new Int32Array(new SharedArrayBuffer(64));

/** The thread count `DPZO_THREADS` asks for (validated), before any permission check. */
export function requestedThreads(setting = Deno.env.get("DPZO_THREADS")): number {
  if (setting === undefined || setting === "") {
    return Math.max(1, Math.min(MAX_THREADS, navigator.hardwareConcurrency || 1));
  }
  const n = Number(setting);
  if (!Number.isInteger(n) || n < 1 || n > MAX_THREADS) {
    throw new Error(
      `DPZO_THREADS=${setting}: must be an integer from 1 to ${MAX_THREADS} (threads for the ` +
        "matMuls, the perturbation pass, attention and the LM head, the main one included); " +
        "unset it for every core",
    );
  }
  return n;
}

/**
 * The helper threads of this process (started on first use; empty where there is one thread
 * or no FFI permission). The main thread makes one more.
 */
export function helpers(): readonly Helper[] {
  if (pool !== undefined) return pool;
  const wanted = requestedThreads() - 1; // throws on a bad DPZO_THREADS, every time
  pool = [];
  if (wanted === 0) {
    why = "DPZO_THREADS=1";
    return pool;
  }
  if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") {
    why = "no --allow-ffi";
    return pool;
  }
  for (let i = 0; i < wanted; i++) {
    const helper = startHelper();
    if (typeof helper === "string") {
      why = helper;
      break;
    }
    pool.push(helper);
  }
  return pool;
}

/** "2 threads", or "1 thread (why)": for the backend line. */
export function describeThreads(): string {
  const n = helpers().length + 1;
  return n === 1 ? `1 thread${why ? ` (${why})` : ""}` : `${n} threads`;
}

function startHelper(): Helper | string {
  const control = new Int32Array(new SharedArrayBuffer(64));
  const args = new Float64Array(new SharedArrayBuffer(ARG_DOUBLES * 8));
  const error = new Uint8Array(new SharedArrayBuffer(ERROR_CAPACITY));
  let worker: Worker;
  try {
    worker = new Worker(new URL("./helper.ts", import.meta.url), {
      workerData: { control, args, error, counter: shared },
    });
  } catch (e) {
    return `a helper thread could not start: ${e instanceof Error ? e.message : String(e)}`;
  }
  worker.unref();
  const deadline = performance.now() + START_TIMEOUT_MS;
  while (Atomics.load(control, STATE) !== READY) {
    const left = deadline - performance.now();
    if (left <= 0 || Atomics.load(control, STATE) === FAILED) {
      worker.terminate();
      const message = new TextDecoder().decode(error.slice(0, control[ERROR_BYTES]));
      return `a helper thread did not start${message ? `: ${message}` : ""}`;
    }
    Atomics.wait(control, STATE, IDLE, Math.min(left, 50));
  }
  Atomics.store(control, STATE, IDLE);
  return {
    args,
    post(command) {
      // Only the main thread posts, and only to an idle helper: one still working (a wait that
      // threw, a timeout) would otherwise take this command's arguments mid-way.
      if (Atomics.load(control, STATE) !== IDLE) {
        throw new Error(
          "helper thread: posted to while busy (an earlier command failed or timed out); " +
            "run with DPZO_THREADS=1 to work without helper threads",
        );
      }
      control[COMMAND] = command;
      Atomics.store(control, STATE, WORKING);
      Atomics.notify(control, STATE);
    },
    wait() {
      // The helper usually finishes at about the time the main thread does: poll briefly
      // before sleeping, since a sleeping thread's wake-up costs more than the poll (on this
      // VM, 2-8% of a small-opt step).
      const spinUntil = performance.now() + SPIN_MS;
      while (Atomics.load(control, STATE) === WORKING && performance.now() < spinUntil) {
        // poll
      }
      const deadline = performance.now() + ANSWER_TIMEOUT_MS;
      while (Atomics.load(control, STATE) === WORKING) {
        const left = deadline - performance.now();
        if (left <= 0) {
          // STATE stays WORKING: later posts to this helper fail instead of racing it.
          throw new Error(
            `helper thread: no answer in ${ANSWER_TIMEOUT_MS / 1000} s (did it die?); ` +
              "run with DPZO_THREADS=1 to work without helper threads",
          );
        }
        Atomics.wait(control, STATE, WORKING, left);
      }
      const state = Atomics.exchange(control, STATE, IDLE);
      if (state === FAILED) {
        const message = new TextDecoder().decode(error.slice(0, control[ERROR_BYTES]));
        throw new Error(`helper thread: ${message}`);
      }
    },
  };
}

/**
 * Runs one command on `pool` and `work` on this thread, the threads taking its parts in turn
 * from the work counter (reset here): `encode` writes the command's arguments into each
 * helper's block, and `work` takes parts from the counter it is given. Returns when every
 * helper is idle again; throws the first error.
 */
export function shareWork(
  pool: readonly Helper[],
  command: number,
  encode: (args: Float64Array) => void,
  work: (counter: Int32Array) => void,
): void {
  Atomics.store(shared, 0, 0);
  const posted: Helper[] = [];
  try {
    for (const helper of pool) {
      encode(helper.args);
      helper.post(command);
      posted.push(helper);
    }
    work(shared);
  } finally {
    waitAll(posted);
  }
}

/**
 * Waits for every helper in `posted`, then throws the first error one of them reported: all of
 * them must be idle again before anyone reuses their memory or posts to them.
 */
export function waitAll(posted: readonly Helper[]): void {
  let failure: Error | undefined;
  for (const helper of posted) {
    try {
      helper.wait();
    } catch (e) {
      failure ??= e instanceof Error ? e : new Error(String(e));
    }
  }
  if (failure) throw failure;
}

/** The helper's side of the protocol (used by ./helper.ts). */
export const protocol = {
  STATE,
  COMMAND,
  ERROR_BYTES,
  IDLE,
  WORKING,
  DONE,
  FAILED,
  READY,
  ERROR_CAPACITY,
} as const;

/** The `bytes` bytes at a raw address (memory another thread owns) as an ArrayBuffer. */
export function bufferAt(address: bigint, bytes: number): ArrayBuffer {
  if (bytes === 0) return new ArrayBuffer(0);
  const pointer = Deno.UnsafePointer.create(address);
  if (pointer === null) throw new Error("cores: null address");
  return Deno.UnsafePointerView.getArrayBuffer(pointer, bytes);
}

/** A Float32Array over `length` floats at a raw address (memory another thread owns). */
export function floatsAt(address: bigint, length: number): Float32Array {
  return new Float32Array(bufferAt(address, length * 4));
}

/** The raw address of a typed array's first element. */
export function addressOf(view: ArrayBufferView): bigint {
  if (view.byteLength === 0) return 0n;
  return Deno.UnsafePointer.value(Deno.UnsafePointer.of(view as Uint8Array)!) as bigint;
}
