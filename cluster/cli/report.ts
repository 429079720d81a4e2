/**
 * `dpzo report --run RUN_DIR [--public] [--out FILE] [--png FILE]`: the run's report as one
 * self-contained HTML page (plots as static SVG, the config, the privacy statement, hardware and
 * timings). `dpzo train` writes RUN_DIR/report.html itself at the end; this command (re)builds
 * it, also for a run still in progress. That report is a private diagnostic (losses, batch sizes,
 * timings); `--public` writes RUN_DIR/report-public.html from released values only (run.json and
 * the ledger), fit to publish. --png also saves a screenshot through headless Chromium.
 */
import { Command } from "@commander-js/extra-typings";
import { writeReport } from "../../src/report/mod.ts";
import { writePublicReport } from "../../src/report/public.ts";

export function reportCommand() {
  return new Command("report")
    .description("write a run's report: one self-contained HTML page with plots")
    .requiredOption("--run <dir>", "the run directory (run_dir of dpzo train)")
    .option(
      "--public",
      "from released values only (settings, ghat, epsilon): RUN_DIR/report-public.html",
    )
    .option(
      "--out <file>",
      "where to write the HTML (default RUN_DIR/report.html, or report-public.html)",
    )
    .option("--png <file>", "also save a full-page screenshot (needs Debian's chromium)")
    .action(async (opts) => {
      const out = opts.public
        ? await writePublicReport(opts.run, opts.out)
        : await writeReport(opts.run, opts.out);
      console.log(`report: ${out}`);
      if (opts.png) {
        const { screenshot } = await import("../../src/report/screenshot.ts");
        // The page's height: header and tables, two plots a row, the config lines.
        const html = await Deno.readTextFile(out);
        const figures = html.split("<figure").length - 1;
        const config = html.slice(html.indexOf('<pre id="config">')).split("\n").length;
        await screenshot(out, opts.png, 1100 + 380 * Math.ceil(figures / 2) + 16 * config);
        console.log(`screenshot: ${opts.png}`);
      }
    });
}
