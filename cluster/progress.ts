/**
 * The live progress line of long commands: step, key figures, steps/s and ETA, redrawn in place
 * on a terminal; plain periodic lines when stderr is not a TTY or with --quiet.
 */
export class Progress {
  #total: number;
  #start = performance.now();
  #lastPrint = 0;
  #tty: boolean;
  #quiet: boolean;
  #log: (line: string) => void;
  #drawn = false;

  constructor(total: number, opts: { quiet?: boolean; log?: (line: string) => void } = {}) {
    this.#total = total;
    this.#quiet = opts.quiet ?? false;
    this.#log = opts.log ?? ((l) => console.error(l));
    this.#tty = !this.#quiet && Deno.stderr.isTerminal();
  }

  update(step: number, figures: Record<string, string | undefined>): void {
    const now = performance.now();
    const elapsed = (now - this.#start) / 1000;
    const rate = step / Math.max(elapsed, 1e-9);
    const eta = (this.#total - step) / Math.max(rate, 1e-9);
    const parts = Object.entries(figures).filter(([, v]) => v !== undefined).map(([k, v]) =>
      `${k} ${v}`
    );
    const line = `step ${step}/${this.#total} ${parts.join(" ")} ${rate.toFixed(2)} steps/s ETA ${
      formatSeconds(eta)
    }`;
    if (this.#tty) {
      const width = 30, filled = Math.round((width * step) / this.#total);
      const bar = "#".repeat(filled) + ".".repeat(width - filled);
      Deno.stderr.writeSync(new TextEncoder().encode(`\r\x1b[2K[${bar}] ${line}`));
      this.#drawn = true;
    } else if (now - this.#lastPrint > (this.#quiet ? 30000 : 5000) || step === this.#total) {
      this.#log(line);
      this.#lastPrint = now;
    }
  }

  /** A line that stays above the progress bar. */
  note(line: string): void {
    if (this.#tty && this.#drawn) Deno.stderr.writeSync(new TextEncoder().encode("\r\x1b[2K"));
    this.#log(line);
  }

  done(): void {
    if (this.#tty && this.#drawn) Deno.stderr.writeSync(new TextEncoder().encode("\n"));
    this.#drawn = false;
  }
}

export function formatSeconds(s: number): string {
  if (!Number.isFinite(s)) return "?";
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = Math.floor(s % 60);
  return h > 0
    ? `${h}h${String(m).padStart(2, "0")}m`
    : m > 0
    ? `${m}m${String(sec).padStart(2, "0")}s`
    : `${sec}s`;
}
