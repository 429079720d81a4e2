/**
 * Rebuilds the fused kernels (LM-head log-sum-exp, attention, LayerNorm, embeddings): compiles
 * `fused_kernel.ts` (AssemblyScript) with asc and writes the binary, base64-encoded, to
 * `fused_kernel_wasm.ts` (`src/asc_build.ts`).
 *
 * Run from the repository root: `deno run -A src/tensor/wasm/build.ts [--check]`
 * (`--check` fails if the committed `fused_kernel_wasm.ts` differs from a fresh build).
 *
 * The module imports its memory (`env.memory`): it runs on the heap of the TensorFlow.js WASM
 * backend, so it must have no data segments (they would be written over that heap); the build
 * checks this. Built with relaxed SIMD (`relaxed_madd`: fused multiply-adds where the CPU has
 * FMA; V8 has shipped it since 11.4).
 */
import { ASC_BASE_FLAGS, buildKernel } from "../../asc_build.ts";

if (import.meta.main) {
  await buildKernel({
    builder: "src/tensor/wasm/build.ts",
    source: "src/tensor/wasm/fused_kernel.ts",
    target: "src/tensor/wasm/fused_kernel_wasm.ts",
    flags: [...ASC_BASE_FLAGS, "--enable", "relaxed-simd", "--importMemory"],
    title: "The fused kernels",
    constant: "FUSED_KERNEL_WASM_BASE64",
    noDataSegments: true,
  }, Deno.args);
}
