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
