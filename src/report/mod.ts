/**
 * Run reports: `writeReport(runDir)` reads a run directory and writes report.html beside it (a
 * self-contained page with the plots as static SVG), `hostInfo()` records the machine of a run.
 */
import { readRun } from "./run_data.ts";
import { runCharts } from "./charts.ts";
import { reportHtml } from "./html.ts";

export { readRun } from "./run_data.ts";
export type { RunData } from "./run_data.ts";
export { reportHtml, reportPrivacyStatement, reportWarnings } from "./html.ts";
export { runCharts } from "./charts.ts";
export { privacyStatement, runPrivacyStatement } from "./privacy_statement.ts";
export { LossBlowUpError, RunMonitor, type RunWarning } from "./warnings.ts";

export const REPORT_FILE = "report.html";

/** Builds the report of `runDir` and writes it (atomically) to `out` (default RUN/report.html). */
export async function writeReport(
  runDir: string,
  out = `${runDir}/${REPORT_FILE}`,
): Promise<string> {
  const data = await readRun(runDir);
  const html = reportHtml(data, await runCharts(data));
  const tmp = `${out}.tmp-${Deno.pid}`;
  await Deno.writeTextFile(tmp, html);
  await Deno.rename(tmp, out);
  return out;
}

export interface HostInfo {
  hostname: string;
  os: string;
  cpu: string;
  cores: number;
  memory_gib: number;
  runtime: string;
}

/** The machine this process runs on (the coordinator's, for a run over NATS). */
export async function hostInfo(): Promise<HostInfo> {
  const os = await import("node:os");
  const cpus = os.cpus();
  return {
    hostname: os.hostname(),
    os: `${Deno.build.os} ${os.release()} ${Deno.build.arch}`,
    cpu: cpus[0]?.model?.trim() ?? "unknown",
    cores: cpus.length || navigator.hardwareConcurrency,
    memory_gib: Number((os.totalmem() / 2 ** 30).toFixed(1)),
    runtime: `Deno ${Deno.version.deno} (V8 ${Deno.version.v8})`,
  };
}
