/**
 * Validation messages: every input boundary (config, CLI flag, message, checkpoint, data file)
 * is checked with zod, and a failure becomes one line naming the field and what is expected.
 */
import type { z } from "zod";

/** `field.path: message; other.field: message` — one line, fields named as in the input. */
export function formatZodError(error: z.ZodError): string {
  return error.issues
    .map((issue) => {
      const path = issue.path.map(String).join(".");
      return path ? `${path}: ${issue.message}` : issue.message;
    })
    .join("; ");
}

/** An error the command line prints as one line (no stack trace) and exits with status 2. */
export class UsageError extends Error {
  override name = "UsageError";
}
