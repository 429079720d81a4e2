/**
 * Rebuilds the z kernel: compiles `z_kernel.ts` (AssemblyScript) with asc and writes the binary,
 * base64-encoded, to `z_kernel_wasm.ts` (`src/asc_build.ts`).
 *
 * Run from the repository root: `deno run -A src/rng/wasm/build.ts [--check]`
 * (`--check` fails if the committed `z_kernel_wasm.ts` differs from a fresh build).
 *
 * The kernel owns its memory (10 pages, never grown): a z buffer and a theta buffer.
 */
import { ASC_BASE_FLAGS, buildKernel } from "../../asc_build.ts";

if (import.meta.main) {
  await buildKernel({
    builder: "src/rng/wasm/build.ts",
    source: "src/rng/wasm/z_kernel.ts",
    target: "src/rng/wasm/z_kernel_wasm.ts",
    flags: [...ASC_BASE_FLAGS, "--initialMemory", "10"],
    title: "The z kernel",
    constant: "Z_KERNEL_WASM_BASE64",
  }, Deno.args);
}
