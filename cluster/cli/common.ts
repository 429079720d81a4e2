/**
 * What the commands share: the `--backend` option, parsing of numeric flags with zod, and
 * the rule that an error is printed as one line, not a stack trace.
 */
import { Option } from "@commander-js/extra-typings";
import { z } from "zod";
import {
  BACKEND_NAMES,
  type BackendName,
  describeBackend,
  initBackend,
} from "../../src/tensor/backend.ts";
import { formatZodError, UsageError } from "../../src/validation.ts";
import { STORAGE_DTYPES, type StorageDtype } from "../../src/model/weights.ts";
import { runPrivacyCaveats, runPrivacyStatement } from "../../src/report/privacy_statement.ts";
import type { RunSummary } from "../run.ts";
import { envOverrides } from "../../src/dpzo/config.ts";

/** The `DPZO_SET` overrides of a new run's config, said on stderr when there are any. */
export function setsFromEnv(): string[] {
  const sets = envOverrides();
  if (sets.length) console.error(`DPZO_SET: ${sets.join(" ")} (applied after any --set)`);
  return sets;
}

export function dtypeOption() {
  return new Option(
    "--dtype <dtype>",
    "how the weights are stored: float32, or bfloat16/float16 at 2 bytes per weight " +
      "(computed in float32)",
  ).choices(STORAGE_DTYPES).default("float32" as StorageDtype);
}

export function backendOption() {
  return new Option("--backend <name>", "tensor backend: wasm (CPU default), cpu, tensorflow")
    .choices(BACKEND_NAMES)
    .default("wasm" as BackendName);
}

/** Starts the backend and prints which one is active (to stderr, so --json stays clean). */
export async function startBackend(name: BackendName): Promise<void> {
  await initBackend(name);
  console.error(describeBackend());
}

/** Validates a parsed flag with a zod schema; the error names the flag. */
export function flag<T>(name: string, schema: z.ZodType<T>, value: unknown): T {
  const r = schema.safeParse(value);
  if (!r.success) throw new UsageError(`${name}: ${formatZodError(r.error)}`);
  return r.data;
}

export const positiveInt = z.coerce.number({ error: "expected a number" }).int({
  error: "expected a whole number",
}).positive({ error: "expected a number above 0" });

/**
 * The lines `dpzo train`, `dpzo launch` and `dpzo coordinate` print at the end of a run. The
 * privacy sentence is the one `dpzo privacy` and the report print.
 */
export function printSummary(runDir: string, s: RunSummary, out = console.log): void {
  const pct = (v: number | null | undefined) =>
    v === null || v === undefined ? "-" : `${(v * 100).toFixed(1)}%`;
  const f = s.final;
  out(`run: ${runDir}`);
  if (f.test_f1 !== undefined) {
    out(
      `F1: val ${pct(f.val_f1)}, test ${pct(f.test_f1)}; ` +
        `exact match: val ${pct(f.val_em)}, test ${pct(f.test_em)}`,
    );
  } else {
    out(`accuracy: val ${pct(f.val_accuracy)}, test ${pct(f.test_accuracy)}`);
  }
  out(`privacy: ${runPrivacyStatement(s)}`);
  for (const c of runPrivacyCaveats(s)) out(`  not covered: ${c}`);
  if (s.activation_bytes_per_step > 0) {
    out(
      `traffic per step: parameter sync ${s.param_sync_bytes_per_step_per_worker.toFixed(0)} B ` +
        `per worker, activations ${(s.activation_bytes_per_step / 1024).toFixed(1)} KiB`,
    );
  }
  out(`final_weights_sha256: ${s.final_weights_sha256}`);
}
