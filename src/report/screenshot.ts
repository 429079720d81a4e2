/**
 * Debian's headless Chromium for reports: where it is, the flags it runs with offline, and a
 * PNG of a report through Chromium's own --screenshot. No driver library here, so that the CLI
 * can take a screenshot with its ordinary permissions (src/report/browser.ts drives Chromium
 * with playwright-core for the report test).
 */
export const CHROMIUM = Deno.env.get("DPZO_CHROMIUM") ?? "/usr/bin/chromium";

export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/**
 * A PNG of the report with Chromium's own --screenshot (no driver, so it runs with the CLI's
 * permissions; what `dpzo report --png` runs). The window is `height` pixels tall.
 */
export async function screenshot(htmlFile: string, png: string, height = 2800): Promise<void> {
  try {
    Deno.statSync(CHROMIUM);
  } catch {
    throw new Error(
      `--png: ${CHROMIUM} is missing: apt-get install chromium (Debian), or set DPZO_CHROMIUM`,
    );
  }
  const profile = await Deno.makeTempDir({ prefix: "dpzo-chromium-" });
  try {
    const out = await new Deno.Command(CHROMIUM, {
      args: [
        "--headless",
        ...CHROMIUM_ARGS,
        `--user-data-dir=${profile}`,
        "--hide-scrollbars",
        `--window-size=1240,${Math.round(height)}`,
        `--screenshot=${png.startsWith("/") ? png : `${Deno.cwd()}/${png}`}`,
        new URL(`file://${await Deno.realPath(htmlFile)}`).href,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) {
      throw new Error(`chromium failed: ${new TextDecoder().decode(out.stderr).slice(-500)}`);
    }
  } finally {
    await Deno.remove(profile, { recursive: true }).catch(() => {});
  }
}
