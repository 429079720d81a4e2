/**
 * Released vs private, in the files of a run (README, "What is released").
 *
 * Differential privacy covers what a run releases: the step seeds and the noised sums (the
 * ledger), and what is computed from them alone (the model, epsilon, the public report). Every
 * other figure of a run — losses, batch sizes, clipped fractions, |g_i|, timings, traffic — is
 * derived from the training data without noise: a private diagnostic, to be kept with the
 * training data. Files say which they are:
 *
 * - `release.json` in a run directory and in an export lists the releasable files;
 * - private files say so at their top: the first line of metrics.jsonl, `private_diagnostics`
 *   in summary.json (naming its private fields), a banner in report.html, and the first line a
 *   run logs.
 */
import { encodeLedgerLine, isLegacyEntry, type LedgerEntry } from "./ledger.ts";

/** The files of a run directory that may be published (the rest is private). */
export const RELEASABLE_RUN_FILES = ["run.json", "ledger.jsonl", "release.json"] as const;

/** The one sentence private files start with. */
export const PRIVATE_NOTE = "derived from the training data without noise (not covered by the " +
  "privacy guarantee): keep with the training data, do not publish (README, What is released)";

/** The first line of metrics.jsonl (an event, so that readers of step lines skip it). */
export function metricsHeader(): Record<string, unknown> {
  return { private_diagnostics: PRIVATE_NOTE, event: "header" };
}

/** summary.json fields that are private diagnostics (the rest is computed from the ledger). */
export const PRIVATE_SUMMARY_FIELDS = [
  "train_loss_first",
  "train_loss_last",
  "largest_passage",
  "wall_s",
  "activation_bytes_per_step",
  "cluster",
];

/** What each releasable file holds. */
const HOLDS: Record<string, string> = {
  "run.json": "the run's settings and its privacy plan",
  "ledger.jsonl": "per step: the public seed, the released noisy sum (sum_units, in units of " +
    "the grid) and ghat computed from it, and the step's public settings; base checkpoint + " +
    "ledger = the model",
  "release.json": "this list",
  "report-public.html": "dpzo report --public: the privacy statement, ghat and epsilon per " +
    "step, the settings",
  "model.safetensors": "the weights: the base checkpoint with the ledger replayed onto it",
  "adapter_model.safetensors": "the LoRA adapters: replayed from the ledger",
  "adapter_config.json": "PEFT's adapter settings",
};

/** The manifest of a directory of releasable files. */
export function releaseManifest(
  files: readonly string[],
  warning?: string,
): Record<string, unknown> {
  return {
    format: "dpzo-release/1",
    ...(warning ? { warning } : {}),
    releasable: Object.fromEntries(
      files.map((f) => [f, HOLDS[f] ?? "copied from the base checkpoint"]),
    ),
    private: "everything else of a run (metrics.jsonl, summary.json, report.html, its logs, " +
      "snapshots/, nats/) is derived from the training data without noise: keep it with the data",
  };
}

/**
 * The warning of a release whose values are not differentially private (a non-private run, or
 * one with insecure_seed), or null.
 */
export function releaseWarning(
  config: { insecure_seed: number | null; privacy: { enabled: boolean } },
): string | undefined {
  if (!config.privacy.enabled) {
    return "NOT PRIVATE: privacy.enabled was false; ghat is the plain batch mean, and these " +
      "files are as sensitive as the training data";
  }
  if (config.insecure_seed !== null) {
    return "NOT PRIVATE: insecure_seed was set: anyone with run.json can recompute the " +
      "sampling and the noise";
  }
  return undefined;
}

/** Writes `dir/release.json` (atomically). */
export async function writeReleaseManifest(
  dir: string,
  files: readonly string[],
  warning?: string,
): Promise<void> {
  const tmp = `${dir}/release.json.tmp-${Deno.pid}`;
  await Deno.writeTextFile(tmp, JSON.stringify(releaseManifest(files, warning), null, 2) + "\n");
  await Deno.rename(tmp, `${dir}/release.json`);
}

/** The releasable files a directory's release.json lists (empty without one). */
export async function releasedFiles(dir: string): Promise<string[]> {
  try {
    const m = JSON.parse(await Deno.readTextFile(`${dir}/release.json`));
    return Object.keys(m.releasable ?? {});
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw new Error(`${dir}/release.json: ${e instanceof Error ? e.message : e}`);
  }
}

/**
 * Writes `dir/ledger.jsonl` for release: the entries as the ledger holds them, less the
 * wall-clock `time` of ledgers before format 2 (re-checksummed). Returns a warning for such a
 * ledger: its noise was floating-point.
 */
export async function writeReleasedLedger(
  dir: string,
  entries: readonly LedgerEntry[],
): Promise<string | undefined> {
  const lines = entries.map(({ time: _time, ...e }) => encodeLedgerLine(e)).join("");
  const tmp = `${dir}/ledger.jsonl.tmp-${Deno.pid}`;
  await Deno.writeTextFile(tmp, lines);
  await Deno.rename(tmp, `${dir}/ledger.jsonl`);
  if (entries.some(isLegacyEntry)) {
    return "this ledger was written before ledger format 2: its noise was sampled in floating " +
      "point, whose low bits can reveal the noiseless sum (Mironov 2012); its wall-clock " +
      "times were removed. Runs made now use exact integer noise";
  }
  return undefined;
}
