/**
 * One progress bar per downloaded file on stderr: redrawn in place on a terminal, plain start /
 * periodic / end lines otherwise (logs, CI).
 */
export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024, i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(1)} ${units[i]}`;
}

function formatEta(s: number): string {
  if (!Number.isFinite(s) || s < 0) return "?";
  const m = Math.floor(s / 60), sec = Math.floor(s % 60);
  return m > 0 ? `${m}m${String(sec).padStart(2, "0")}s` : `${sec}s`;
}

export interface ProgressSink {
  /** Plain line output (default: console.error). */
  log?: (line: string) => void;
  /** Redraw in place; default: whether stderr is a terminal. */
  tty?: boolean;
}

export class FileProgress {
  #start = performance.now();
  #lastPlain = performance.now();
  #lastDraw = 0;
  #done: number;
  #tty: boolean;
  #log: (line: string) => void;

  constructor(
    private name: string,
    private total: number | undefined,
    resumedFrom: number,
    sink: ProgressSink = {},
  ) {
    this.#done = resumedFrom;
    this.#tty = sink.tty ?? Deno.stderr.isTerminal();
    this.#log = sink.log ?? ((l) => console.error(l));
    const size = total === undefined ? "" : ` (${formatBytes(total)})`;
    const resumed = resumedFrom > 0 ? `, resuming at ${formatBytes(resumedFrom)}` : "";
    if (!this.#tty) this.#log(`downloading ${name}${size}${resumed}`);
  }

  #line(): string {
    const elapsed = (performance.now() - this.#start) / 1000;
    const rate = this.#done / Math.max(elapsed, 1e-3);
    const of = this.total === undefined ? "" : ` / ${formatBytes(this.total)}`;
    const eta = this.total === undefined
      ? ""
      : ` ETA ${formatEta((this.total - this.#done) / rate)}`;
    return `${this.name} ${formatBytes(this.#done)}${of} ${formatBytes(rate)}/s${eta}`;
  }

  add(bytes: number): void {
    this.#done += bytes;
    const now = performance.now();
    if (this.#tty) {
      if (now - this.#lastDraw < 100) return;
      this.#lastDraw = now;
      const width = 30;
      const filled = this.total
        ? Math.min(width, Math.round((width * this.#done) / this.total))
        : 0;
      const bar = "#".repeat(filled) + ".".repeat(width - filled);
      Deno.stderr.writeSync(new TextEncoder().encode(`\r\x1b[2K[${bar}] ${this.#line()}`));
    } else if (now - this.#lastPlain > 10000) {
      this.#lastPlain = now;
      this.#log(this.#line());
    }
  }

  end(ok: boolean): void {
    const secs = ((performance.now() - this.#start) / 1000).toFixed(1);
    if (this.#tty) Deno.stderr.writeSync(new TextEncoder().encode("\r\x1b[2K"));
    this.#log(
      ok
        ? `downloaded ${this.name} (${formatBytes(this.#done)}) in ${secs} s`
        : `stopped ${this.name} at ${formatBytes(this.#done)}`,
    );
  }
}
