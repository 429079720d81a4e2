/**
 * Native matMul for the WASM backend: the system's OpenBLAS `cblas_sgemm`, called through
 * Deno's FFI directly on the WASM heap (no copies), one thread per call, the threads of
 * src/cores taking blocks of each product in turn.
 *
 * TensorFlow.js' WASM matMul is single-threaded (XNNPACK without a thread pool; Deno has no
 * WASM threads) and reaches 15-35 GFLOP/s here; OpenBLAS reaches 80-100 GFLOP/s per core, the
 * library PyTorch itself uses on CPU. Everything else (the perturbation pass, attention's
 * softmax, LayerNorm, the log-sum-exp) stays in WASM, so the weights still live in, and are
 * perturbed in place in, the backend's heap: OpenBLAS only reads them there.
 *
 * `enableNativeMatMul()` replaces the WASM backend's `BatchMatMul` kernel with one that cuts
 * the product into blocks of rows (src/tensor/sgemm.ts `gemmBlocks`) and keeps the original for
 * anything it does not handle. Choose the library with `DPZO_BLAS`:
 * - unset or `auto`: `libopenblas.so.0` (Debian: `apt-get install libopenblas0`) when it loads,
 *   else the WASM matMul;
 * - a path or soname: that library (it must export `cblas_sgemm`), an error when it fails;
 * - `off`: always the WASM matMul.
 *
 * Reproducibility. OpenBLAS' sums differ from XNNPACK's in the last bits, and its own last bits
 * depend on the call's shape, a column's place in it, the kernel set (`OPENBLAS_CORETYPE`) and,
 * when it runs a call on several threads, on how it splits the call among them. So the library
 * is loaded with one thread (`OPENBLAS_NUM_THREADS` and its kin are set to 1 while it loads, and
 * `openblas_set_num_threads(1)`), and every product is cut into blocks whose shape depends on
 * the product's shape alone: a block is the same call on any thread, and the thread count
 * (`DPZO_THREADS`, the user's `OPENBLAS_NUM_THREADS`) changes the speed, never a bit. What still
 * differs between machines, the kernel set and whether the CPU fuses multiply-adds, is the
 * process' `matMulIdentity()`: workers report it and the coordinator warns when they differ.
 * The coordinator cuts batches into the same micro-batches whatever the topology
 * (cluster/coordinator.ts `scoreExamples`), so a product's shape does not depend on it either.
 */
import * as tf from "@tensorflow/tfjs-core";
import { addressOf, Command, helpers, shareWork } from "../cores/mod.ts";
import { encodeJob, type JobOf, type Layout } from "./lane.ts";
import { kernelsFuseMultiplyAdd } from "./wasm/fused_kernels.ts";
import {
  CBLAS_SGEMM,
  GEMM_JOB,
  gemmBlocks,
  type GemmJob,
  gemmParts,
  gemmRows,
  type Sgemm,
  sgemmOf,
} from "./sgemm.ts";

const SYMBOLS = { cblas_sgemm: CBLAS_SGEMM } as const;

const OPTIONAL_SYMBOLS = {
  openblas_get_num_threads: { parameters: [], result: "i32", optional: true },
  openblas_set_num_threads: { parameters: ["i32"], result: "void", optional: true },
  openblas_get_config: { parameters: [], result: "pointer", optional: true },
  openblas_get_corename: { parameters: [], result: "pointer", optional: true },
} as const;

type Library = Deno.DynamicLibrary<typeof SYMBOLS & typeof OPTIONAL_SYMBOLS>;

/** What `enableNativeMatMul` found: the library in use, or why the WASM matMul stays. */
export interface NativeMatMul {
  enabled: boolean;
  /** e.g. "OpenBLAS 0.3.21 (Haswell kernels, one thread per call)", or why it is off. */
  description: string;
  /**
   * What decides the last bits of a matMul: "wasm", or library and kernel set ("OpenBLAS
   * 0.3.21 Haswell"), with the library's thread count when it would not run on one ("x4": its
   * calls may then split differently). Processes that report the same identity compute the
   * same losses for the same micro-batch; the workers of a run compare theirs.
   */
  identity: string;
}

let state: NativeMatMul | undefined;
let library: Library | undefined;
let libraryName: string | undefined;
let sgemm: Sgemm | undefined;
/** Whether helper threads may make calls of their own (an OpenBLAS that runs them on one). */
let threadable = false;

interface WasmBackend {
  dataIdMap: { get(id: object): { memoryOffset: number } | undefined };
  wasm: { HEAPU8: Uint8Array };
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
}

/**
 * Variables by which BLAS libraries (and OpenMP, which some builds run on) take their thread
 * count when they load.
 */
const THREAD_VARIABLES = [
  "OPENBLAS_NUM_THREADS",
  "GOTO_NUM_THREADS",
  "OMP_NUM_THREADS",
  "MKL_NUM_THREADS",
  "BLIS_NUM_THREADS",
];

function openLibrary(name: string): Library {
  // OpenMP's threads wait passively between calls unless the user says otherwise: by default
  // they spin for a while after every call, and the processes of a local cluster (or the test
  // suite's) share the cores with them. libgomp reads this when the library loads it.
  if (Deno.env.get("OMP_WAIT_POLICY") === undefined) Deno.env.set("OMP_WAIT_POLICY", "PASSIVE");
  // One thread per call, whatever the user's environment says (see the module comment): the
  // library (and libgomp) read these once, when they load; the user's values are put back for
  // the processes this one starts.
  const saved = THREAD_VARIABLES.map((v) => [v, Deno.env.get(v)] as const);
  for (const v of THREAD_VARIABLES) Deno.env.set(v, "1");
  let lib: Library;
  try {
    pinLibrary(name);
    lib = Deno.dlopen(name, { ...SYMBOLS, ...OPTIONAL_SYMBOLS }) as Library;
  } finally {
    for (const [v, value] of saved) {
      if (value === undefined) Deno.env.delete(v);
      else Deno.env.set(v, value);
    }
  }
  lib.symbols.openblas_set_num_threads?.(1);
  return lib;
}

/**
 * Loads the library once more with RTLD_NODELETE, so that it stays mapped for the life of the
 * process. Deno closes a library when the isolate that opened it ends (every test module, every
 * worker); OpenBLAS' threads outlive that, and unmapping the code under them crashed the
 * process (SIGSEGV at exit). Linux only; elsewhere a no-op.
 */
function pinLibrary(name: string): void {
  if (Deno.build.os !== "linux") return;
  const RTLD_NOW = 2, RTLD_NODELETE = 0x1000;
  try {
    const libc = Deno.dlopen("libc.so.6", {
      dlopen: { parameters: ["buffer", "i32"], result: "pointer" },
    });
    try {
      libc.symbols.dlopen(new TextEncoder().encode(name + "\0"), RTLD_NOW | RTLD_NODELETE);
    } finally {
      libc.close();
    }
  } catch {
    // not glibc: the library is then only as pinned as Deno keeps it
  }
}

function describeLibrary(lib: Library, name: string): { description: string; identity: string } {
  const cString = (p: Deno.PointerValue | undefined) =>
    p ? new Deno.UnsafePointerView(p).getCString() : "";
  const threads = lib.symbols.openblas_get_num_threads?.();
  const version = cString(lib.symbols.openblas_get_config?.()).match(/OpenBLAS\s+([\d.]+)/)?.[1];
  const core = cString(lib.symbols.openblas_get_corename?.());
  const what = version ? `OpenBLAS ${version}` : name;
  const calls = threads === 1
    ? "one thread per call"
    : threads
    ? `${threads} threads per call: results may depend on them`
    : "";
  const details = [core ? `${core} kernels` : "", calls].filter(Boolean).join(", ");
  return {
    description: details ? `${what} (${details})` : what,
    identity: [what, core, threads && threads !== 1 ? `x${threads}` : ""].filter(Boolean)
      .join(" "),
  };
}

/**
 * Switches the WASM backend's matMul to the native BLAS named by `DPZO_BLAS` (see the module
 * comment). Call once, after the WASM backend is active. Returns what is in use.
 */
export function enableNativeMatMul(setting = Deno.env.get("DPZO_BLAS") ?? "auto"): NativeMatMul {
  if (state) return state;
  if (setting === "off") {
    return (state = { enabled: false, description: "off (DPZO_BLAS=off)", identity: "wasm" });
  }
  const explicit = setting !== "auto" && setting !== "";
  const name = explicit ? setting : "libopenblas.so.0";
  let lib: Library;
  try {
    lib = openLibrary(name);
  } catch (e) {
    const reason = e instanceof Error ? e.message.split("\n")[0] : String(e);
    if (explicit) {
      throw new Error(
        `DPZO_BLAS=${setting}: cannot load it (${reason}); give a library that exports ` +
          "cblas_sgemm, or DPZO_BLAS=off for the WASM matMul",
      );
    }
    return (state = {
      enabled: false,
      description: `not found (${name}); the WASM matMul is 4-10x slower: ` +
        "apt-get install libopenblas0",
      identity: "wasm",
    });
  }
  library = lib;
  libraryName = name;
  // Helpers make calls of their own only on a library known to run them on the calling
  // thread alone and to keep a pool of buffers for concurrent callers (OpenBLAS).
  threadable = lib.symbols.openblas_get_num_threads?.() === 1;
  const original = tf.getKernel(tf.BatchMatMul, "wasm");
  if (!original) throw new Error("native matMul: the WASM backend is not registered");
  tf.unregisterKernel(tf.BatchMatMul, "wasm");
  tf.registerKernel({
    kernelName: tf.BatchMatMul,
    backendName: "wasm",
    kernelFunc: (args) => sgemmBatchMatMul(args) ?? (original.kernelFunc(args) as tf.TensorInfo),
  });
  return (state = { enabled: true, ...describeLibrary(lib, name) });
}

/**
 * Runs a job whose parts make OpenBLAS calls (src/tensor/head.ts, src/tensor/fused.ts, the
 * matMul below) on every thread: each takes the next part from the work counter (src/cores
 * `shareWork`). The helpers join (`command`, the job written with `layout`, src/tensor/lane.ts)
 * when the library runs each call on its calling thread (see `threadable`); otherwise the main
 * thread does every part. Either way a part is the same call, so the bits are the same.
 */
export function shareBlasWork<L extends Layout>(
  command: number,
  layout: L,
  job: JobOf<L>,
  work: (counter: Int32Array, gemm: Sgemm) => void,
): void {
  const gemm = nativeSgemm();
  const pool = threadable ? helpers() : [];
  shareWork(
    pool,
    command,
    (args) => encodeJob(layout, job, libraryName!, args),
    (c) => work(c, gemm),
  );
}

/** The state of the native matMul (undefined before `enableNativeMatMul`). */
export function nativeMatMul(): NativeMatMul | undefined {
  return state;
}

/**
 * The matMul identity of this process: "wasm" unless the native matMul is on, then ", fma" when
 * the fused kernels' multiply-adds are fused on this CPU (src/tensor/wasm/fused_kernel.ts).
 */
export function matMulIdentity(): string {
  return (state?.identity ?? "wasm") + (kernelsFuseMultiplyAdd() ? ", fma" : "");
}

/**
 * `cblas_sgemm` of the loaded library on raw addresses (src/tensor/sgemm.ts), for the kernels
 * that call it on sub-matrices or outside the heap (the LM head, attention). Throws when the
 * native matMul is off.
 */
export function nativeSgemm(): Sgemm {
  if (!library) throw new Error("nativeSgemm: the native matMul is off");
  sgemm ??= sgemmOf(library.symbols.cblas_sgemm);
  return sgemm;
}

/** The address of a WASM-backend tensor's data (valid until the heap next grows). */
export function heapAddress(t: tf.Tensor): bigint {
  const wasm = tf.backend() as unknown as WasmBackend;
  const info = wasm.dataIdMap.get(t.dataId);
  if (!info) throw new Error("heapAddress: tensor is not on the wasm backend");
  const base = addressOf(wasm.wasm.HEAPU8);
  return base + BigInt(info.memoryOffset);
}

/**
 * `BatchMatMul` through `cblas_sgemm`: C[i] = op(A[i]) · op(B[i]) for each batch entry, with a
 * batch of 1 broadcast. Returns null for what it does not handle (other broadcasts, dtypes).
 */
function sgemmBatchMatMul(
  { inputs, backend, attrs }: {
    inputs: tf.NamedTensorInfoMap;
    backend: unknown;
    attrs?: tf.NamedAttrMap;
  },
): tf.TensorInfo | null {
  const a = inputs.a!, b = inputs.b!;
  const transposeA = Boolean(attrs?.transposeA), transposeB = Boolean(attrs?.transposeB);
  if (a.dtype !== "float32" || b.dtype !== "float32") return null;
  const ra = a.shape.length, rb = b.shape.length;
  const M = transposeA ? a.shape[ra - 1] : a.shape[ra - 2];
  const K = transposeA ? a.shape[ra - 2] : a.shape[ra - 1];
  const Kb = transposeB ? b.shape[rb - 1] : b.shape[rb - 2];
  const N = transposeB ? b.shape[rb - 2] : b.shape[rb - 1];
  if (K !== Kb) return null; // let the original kernel raise its error
  const outerA = a.shape.slice(0, -2), outerB = b.shape.slice(0, -2);
  const batchA = outerA.reduce((x, y) => x * y, 1), batchB = outerB.reduce((x, y) => x * y, 1);
  let outer: number[];
  if (batchA === batchB && sameShape(outerA, outerB)) outer = outerA;
  else if (batchB === 1) outer = outerA;
  else if (batchA === 1) outer = outerB;
  else return null;
  const batch = Math.max(batchA, batchB);

  const wasm = backend as WasmBackend;
  const out = wasm.makeOutput([...outer, M, N], "float32");
  if (M === 0 || N === 0 || batch === 0) return out;
  // The heap may have grown while allocating the output: read it afresh.
  const heap = wasm.wasm.HEAPU8;
  const base = addressOf(heap);
  const at = (t: tf.TensorInfo) => {
    const info = wasm.dataIdMap.get(t.dataId);
    if (!info) throw new Error("native matMul: tensor is not on the wasm backend");
    return BigInt(info.memoryOffset);
  };
  const aAt = at(a), bAt = at(b), cAt = at(out);
  if (K === 0) {
    heap.fill(0, Number(cAt), Number(cAt) + batch * M * N * 4);
    return out;
  }
  runGemm({
    transA: transposeA ? 1 : 0,
    transB: transposeB ? 1 : 0,
    M,
    N,
    K,
    rows: gemmRows(M),
    batch,
    a: base + aAt,
    aStride: batchA === 1 ? 0 : M * K,
    lda: transposeA ? M : K,
    b: base + bAt,
    bStride: batchB === 1 ? 0 : K * N,
    ldb: transposeB ? K : N,
    c: base + cAt,
  });
  return out;
}

/** Runs a product's blocks on every thread (one block: on this thread, without waking any). */
function runGemm(job: GemmJob): void {
  if (gemmParts(job) === 1) gemmBlocks(job, new Int32Array(1), nativeSgemm());
  else shareBlasWork(Command.GemmBlocks, GEMM_JOB, job, (c, gemm) => gemmBlocks(job, c, gemm));
}

/**
 * `A · x` for a float32 matrix A `[M, K]` (row-major) in memory outside the WASM heap (a weight
 * store, src/model/weights.ts) and x `[K, N]` on it: C `[M, N]` on the heap, or null when the
 * native matMul is off (the caller then copies A onto the heap for tfjs' matMul).
 */
export function matMulRaw(
  a: Float32Array,
  M: number,
  K: number,
  x: tf.Tensor2D,
): tf.Tensor2D | null {
  if (!state?.enabled) return null;
  const [K2, N] = x.shape;
  if (K2 !== K || a.length !== M * K) {
    throw new Error(`matMulRaw: [${M}, ${K}] (${a.length} values) times [${x.shape}]`);
  }
  const wasm = tf.backend() as unknown as WasmBackend;
  const out = tf.engine().makeTensorFromTensorInfo(
    wasm.makeOutput([M, N], "float32"),
  ) as tf.Tensor2D;
  if (M === 0 || N === 0) return out;
  if (K === 0) {
    out.dispose();
    return tf.zeros([M, N]);
  }
  // Addresses after the allocation: it may grow (move) the heap.
  runGemm({
    transA: 0,
    transB: 0,
    M,
    N,
    K,
    rows: gemmRows(M),
    batch: 1,
    a: addressOf(a),
    aStride: 0,
    lda: K,
    b: heapAddress(x),
    bStride: 0,
    ldb: N,
    c: heapAddress(out),
  });
  return out;
}

function sameShape(x: number[], y: number[]): boolean {
  return x.length === y.length && x.every((v, i) => v === y[i]);
}
