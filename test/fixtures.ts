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
