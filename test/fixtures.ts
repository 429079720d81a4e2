/**
 * Where the team's shared fixtures live (../shared beside the clone), and a way for tests that
 * need them to skip with a printed reason when they are absent.
 */
export const SHARED = new URL("../../shared/", import.meta.url).pathname.replace(/\/$/, "");
export const FIXTURES = `${SHARED}/fixtures`;
export const DATA = `${SHARED}/data`;

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** True when `path` is missing; prints why the test that needs it is skipped. */
export function missing(path: string): boolean {
  if (exists(path)) return false;
  console.log(`skipping: ${path} is not present (it lives in ../shared beside the clone)`);
  return true;
}

/**
 * True when `binary` cannot be started (it is looked up on the PATH; only whether it starts
 * counts, not its exit code); prints why the test that needs it is skipped.
 */
export function lacks(binary: string): boolean {
  try {
    new Deno.Command(binary, { args: ["--version"], stdout: "null", stderr: "null" }).outputSync();
    return false;
  } catch {
    console.log(`skipping: ${binary} is not installed`);
    return true;
  }
}

/** Polls `cond` every 50 ms until it holds; throws naming `what` after `ms`. */
export async function waitFor(
  what: string,
  cond: () => boolean | Promise<boolean>,
  ms = 90_000,
): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** How many entries a run's ledger holds (0 before it exists). */
export async function ledgerLines(run: string): Promise<number> {
  try {
    return (await Deno.readTextFile(`${run}/ledger.jsonl`)).split("\n").filter((l) => l).length;
  } catch {
    return 0;
  }
}

/** A run's ledger entries without the fields that differ between equal runs (time, check). */
export async function ledgerOf(run: string): Promise<Record<string, unknown>[]> {
  return (await Deno.readTextFile(`${run}/ledger.jsonl`)).trim().split("\n").map((l) => {
    const { time: _t, check: _c, ...rest } = JSON.parse(l);
    return rest;
  });
}

// deno-lint-ignore no-explicit-any
export function readJson(path: string): any {
  return JSON.parse(Deno.readTextFileSync(path));
}

/** The repository root: `deno task` runs from here. */
export const ROOT = new URL("..", import.meta.url).pathname;

/**
 * Runs `deno task dpzo ARGS...` from the repository root, as the README shows it, and returns its
 * exit code and output. A hung run must not hang the suite: it is stopped after `timeoutMs`.
 */
export function dpzo(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return dpzoWith({}, ...args);
}

/** `dpzo` with `env` added to the environment. */
export function dpzoWith(
  env: Record<string, string>,
  ...args: string[]
): Promise<{ code: number; stdout: string; stderr: string }> {
  return runDeno(["task", "--quiet", "dpzo", ...args], env, 300_000, "SIGTERM");
}

/**
 * `dpzo` for benchmarks: no time limit (a benchmark on a loaded machine may well take longer
 * than the tests' five minutes, and stopping it would throw away its figures).
 */
export function dpzoUnlimited(
  ...args: string[]
): Promise<{ code: number; stdout: string; stderr: string }> {
  return runDeno(["task", "--quiet", "dpzo", ...args], {}, Infinity, "SIGTERM");
}

/**
 * Runs `code` (JavaScript that may import the project's modules by absolute path) in a fresh
 * `deno eval` process from the repository root, with `env` added, killed after `timeoutMs`.
 */
export function denoEval(
  code: string,
  env: Record<string, string> = {},
  timeoutMs = 120_000,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return runDeno(["eval", "--ext=js", code], env, timeoutMs, "SIGKILL");
}

async function runDeno(
  args: string[],
  env: Record<string, string>,
  timeoutMs: number,
  signal: Deno.Signal,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    env,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = Number.isFinite(timeoutMs)
    ? setTimeout(() => child.kill(signal), timeoutMs)
    : undefined;
  const out = await child.output();
  clearTimeout(timer);
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}
