/**
 * Tensor backends: TensorFlow.js with the WASM backend (SIMD) as the CPU default (its matMul on
 * the system's OpenBLAS when there is one, `blas.ts`), the pure-JS
 * `cpu` backend as a fallback, and `tensorflow` (`@tensorflow/tfjs-node-gpu` or
 * `@tensorflow/tfjs-node`) loaded by dynamic import only when asked for.
 *
 * The model keeps its weights in backend tensors and the perturbation pass writes into their
 * memory in place (DESIGN.md, invariant 2). `weightView` gives that live memory as a
 * `Float32Array`; it is only valid until the next tensor operation (WASM memory may grow and
 * detach old views), so take a fresh view for every pass.
 */
import * as tf from "@tensorflow/tfjs-core";
import { enableNativeMatMul, nativeMatMul } from "./blas.ts";
import { kernelsFuseMultiplyAdd } from "./wasm/fused_kernels.ts";
import { addressOf, describeThreads, helpers } from "../cores/mod.ts";

export type BackendName = "wasm" | "cpu" | "tensorflow";
export const BACKEND_NAMES: readonly BackendName[] = ["wasm", "cpu", "tensorflow"];

let active: BackendName | undefined;

/** Where the WASM binaries of `@tensorflow/tfjs-backend-wasm` live in `node_modules`. */
function wasmDistUrl(): string {
  const entry = import.meta.resolve("@tensorflow/tfjs-backend-wasm");
  return new URL("./", entry).href;
}

/**
 * Activates a backend once per process and returns its name. Asking for a second, different
 * backend later is an error: weights already live in the first one.
 */
export async function initBackend(name: BackendName = "wasm"): Promise<BackendName> {
  if (active !== undefined) {
    if (active !== name) {
      throw new Error(
        `backend: ${active} is already active in this process; cannot switch to ${name}`,
      );
    }
    return active;
  }
  if (name === "wasm") {
    const wasm = await import("@tensorflow/tfjs-backend-wasm");
    wasm.setWasmPaths(wasmDistUrl());
    if (!(await tf.setBackend("wasm"))) {
      throw new Error("backend: the WASM backend failed to start; try --backend cpu");
    }
    enableNativeMatMul();
    adviseHugePages();
    helpers(); // start the helper threads now: their memory is runtime, not training state
  } else if (name === "cpu") {
    await import("@tensorflow/tfjs-backend-cpu");
    await tf.setBackend("cpu");
  } else {
    await loadTensorflowBinding();
  }
  await tf.ready();
  active = name;
  return name;
}

/** Bytes of the WASM heap's address range given huge-page advice (V8 reserves more). */
const HEAP_RANGE = 4n << 30n;

/**
 * Asks Linux for transparent huge pages on the WASM heap: `madvise(MADV_HUGEPAGE)` over the
 * heap's 4 GiB address range (V8 reserves it whole when the memory is made). The weights and
 * activations then sit in 2 MiB pages, and the perturbation pass and the matMuls miss the TLB
 * less (dpzo bench, alternating runs: 4 of 5 pairs faster, ~3% of a step). It changes nothing
 * where THP is "never" or already "always", and nothing about the results; without FFI
 * permission, or off Linux, it is skipped.
 */
function adviseHugePages(): void {
  if (Deno.build.os !== "linux") return;
  if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return;
  try {
    const libc = Deno.dlopen("libc.so.6", {
      madvise: { parameters: ["pointer", "usize", "i32"], result: "i32" },
    });
    try {
      const MADV_HUGEPAGE = 14, HUGE = 2n << 20n;
      const heap = (tf.backend() as unknown as WasmBackendInternals).wasm.HEAPF32;
      const base = addressOf(heap);
      const start = (base + HUGE - 1n) & ~(HUGE - 1n);
      libc.symbols.madvise(
        Deno.UnsafePointer.create(start),
        HEAP_RANGE - (start - base),
        MADV_HUGEPAGE,
      );
    } finally {
      libc.close();
    }
  } catch {
    // no glibc: the heap keeps small pages
  }
}

/** The `tensorflow` backend needs a native package that this project does not install. */
async function loadTensorflowBinding(): Promise<void> {
  // The specifiers are built at run time so that `deno check` and the lock file do not need
  // the optional packages.
  const candidates = ["@tensorflow/tfjs-node-gpu", "@tensorflow/tfjs-node"];
  for (const pkg of candidates) {
    try {
      await import(`npm:${pkg}@4.22.0`);
      if (await tf.setBackend("tensorflow")) return;
    } catch {
      // try the next one
    }
  }
  throw new Error(
    "backend: tensorflow needs @tensorflow/tfjs-node-gpu (CUDA) or @tensorflow/tfjs-node; " +
      "install one with `npm install @tensorflow/tfjs-node-gpu@4.22.0` on a machine that can " +
      "download libtensorflow, or use --backend wasm",
  );
}

export function activeBackend(): BackendName {
  if (active === undefined) throw new Error("backend: call initBackend() first");
  return active;
}

/** A one-line description of the active backend, printed by the commands. */
export function describeBackend(): string {
  const name = activeBackend();
  if (name === "wasm") {
    const simd = tf.env().getBool("WASM_HAS_SIMD_SUPPORT");
    const blas = nativeMatMul();
    // With OpenBLAS the helpers also take blocks of the matMuls and of the LM head (the fused
    // head needs it); without it they share the perturbation pass and the WASM attention kernel.
    const shared = blas?.enabled
      ? "matMuls, perturbation, attention and LM head"
      : "perturbation and attention";
    const fma = simd && kernelsFuseMultiplyAdd() ? ", fused multiply-add" : "";
    return `backend: wasm (SIMD ${simd ? "on" : "off"}${fma}; matMul: ${
      blas?.description ?? "off"
    }; ` +
      `${shared}: ${describeThreads()})`;
  }
  return `backend: ${name}`;
}

// The backends' internals are not part of tfjs' public types; these are the fields we read.
interface WasmBackendInternals {
  dataIdMap: { get(id: object): { memoryOffset: number } | undefined };
  wasm: { HEAPF32: Float32Array };
}
interface CpuBackendInternals {
  data: { get(id: object): { values: Float32Array } | undefined };
}

/**
 * The live float32 memory of a tensor, for in-place updates. Valid until the next tensor
 * operation. Throws for backends whose memory is not addressable from JS.
 */
export function weightView(t: tf.Tensor): Float32Array {
  if (t.dtype !== "float32") throw new Error(`weightView: ${t.dtype} tensor`);
  const name = activeBackend();
  if (name === "wasm") {
    const b = tf.backend() as unknown as WasmBackendInternals;
    const info = b.dataIdMap.get(t.dataId);
    if (!info) throw new Error("weightView: tensor is not on the wasm backend");
    return new Float32Array(b.wasm.HEAPF32.buffer, info.memoryOffset, t.size);
  }
  if (name === "cpu") {
    const b = tf.backend() as unknown as CpuBackendInternals;
    const info = b.data.get(t.dataId);
    if (!info) throw new Error("weightView: tensor is not on the cpu backend");
    return info.values;
  }
  throw new Error(`weightView: in-place access is not available on the ${name} backend`);
}
