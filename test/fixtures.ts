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
export async function dpzo(
  ...args: string[]
): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["task", "--quiet", "dpzo", ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGTERM"), 300_000);
  const out = await child.output();
  clearTimeout(timer);
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}
