/**
 * The `dpzo` command line: a thin layer over the library in `src/` and `cluster/`.
 *
 * Each command lives in its own module under `cluster/cli/` and only parses flags,
 * validates them, and calls library functions.
 *
 * Run it as `deno task dpzo <command> ...`.
 */
import { Command } from "@commander-js/extra-typings";

export function buildProgram(): Command {
  const program = new Command()
    .name("dpzo")
    .description("Differentially private zeroth-order fine-tuning of OPT models")
    .showHelpAfterError();
  return program;
}

if (import.meta.main) {
  await buildProgram().parseAsync(Deno.args, { from: "user" });
}
