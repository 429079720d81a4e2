/**
 * The `dpzo` command line: a thin layer over the library in `src/` and `cluster/`.
 *
 * Each command lives in its own module under `cluster/cli/` and only parses flags,
 * validates them, and calls library functions.
 *
 * Run it as `deno task dpzo <command> ...`.
 */
import { Command } from "@commander-js/extra-typings";
import { UsageError } from "../src/validation.ts";
import { scoreCommand } from "./cli/score.ts";
import { trainCommand } from "./cli/train.ts";
import { exportCommand } from "./cli/export.ts";
import { benchCommand } from "./cli/bench.ts";
import { privacyCommand } from "./cli/privacy.ts";
import { evalCommand } from "./cli/eval.ts";
import { coordinateCommand, launchCommand, workerCommand } from "./cli/launch.ts";
import { reportCommand } from "./cli/report.ts";
import { planCommand } from "./cli/plan.ts";
import { RunInterrupted } from "./interruption.ts";

export function buildProgram(): Command {
  const program = new Command()
    .name("dpzo")
    .description("Differentially private zeroth-order fine-tuning of OPT models")
    .showHelpAfterError();
  program.addCommand(trainCommand());
  program.addCommand(exportCommand());
  program.addCommand(scoreCommand());
  program.addCommand(benchCommand());
  program.addCommand(privacyCommand());
  program.addCommand(evalCommand());
  program.addCommand(launchCommand());
  program.addCommand(workerCommand());
  program.addCommand(coordinateCommand());
  program.addCommand(reportCommand());
  program.addCommand(planCommand());
  // Errors surface as exceptions so that main() prints them as one line.
  program.exitOverride();
  for (const command of program.commands) command.exitOverride();
  return program;
}

/**
 * An error message as the user should read it. TensorFlow.js' WASM backend aborts with
 * "Aborted(). Build with -sASSERTIONS for more info." when its heap (a 32-bit memory of at most
 * 4 GiB, where the activations live) cannot grow: say that, and what to lower.
 */
export function explain(message: string): string {
  if (!/^Aborted\(/.test(message)) return message;
  return "the WASM heap (at most 4 GiB, where the activations of a forward live) ran out of " +
    "memory: lower the tokens per forward (cluster.micro_batch, or --batch / --seq-len), or " +
    `run with DPZO_DEBUG=1 for the stack (${message.split(".")[0]})`;
}

/** Runs the command line; an error becomes one line on stderr and a non-zero exit. */
export async function main(args: string[]): Promise<number> {
  try {
    await buildProgram().parseAsync(args, { from: "user" });
    return 0;
  } catch (e) {
    // commander has already printed its own usage errors (and help/version output).
    const code = (e as { code?: string }).code;
    if (typeof code === "string" && code.startsWith("commander.")) {
      return code === "commander.helpDisplayed" || code === "commander.version" ? 0 : 2;
    }
    if (e instanceof RunInterrupted) {
      // "interrupted at step N of T (...); continue with: ..."
      if (!e.announced) console.log(e.message);
      return 130;
    }
    console.error(`dpzo: ${explain(e instanceof Error ? e.message : String(e))}`);
    if (Deno.env.get("DPZO_DEBUG") && e instanceof Error) console.error(e.stack);
    return e instanceof UsageError ? 2 : 1;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
