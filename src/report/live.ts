/**
 * The key figures of the live progress line (`dpzo train`, `dpzo launch`): the same series as
 * the report, smoothed over the last steps so that the line is readable.
 */
export interface LiveStep {
  step: number;
  batch_size: number;
  loss_plus: number;
  loss_minus: number;
  ghat: number;
  clipped_fraction: number;
  noise_std?: number;
  forward_s?: number;
  perturb_s?: number;
  wait_s?: number;
}

export class LiveFigures {
  #window: number;
  #recent: LiveStep[] = [];
  #accuracy: number | null = null;
  #epsilon: number | null = null;
  #private: boolean;

  constructor(opts: { private: boolean; window?: number }) {
    this.#private = opts.private;
    this.#window = opts.window ?? 20;
  }

  step(m: LiveStep, epsilon?: number | null): void {
    this.#recent.push(m);
    if (this.#recent.length > this.#window) this.#recent.shift();
    if (epsilon !== undefined && epsilon !== null) this.#epsilon = epsilon;
  }

  eval(accuracy: number): void {
    if (Number.isFinite(accuracy)) this.#accuracy = accuracy;
  }

  /** Figures for Progress.update: loss, acc, eps, clip, |ghat| against the noise, time split. */
  figures(): Record<string, string | undefined> {
    const r = this.#recent;
    const avg = (f: (s: LiveStep) => number | undefined, rows = r) => {
      const v = rows.map(f).filter((x): x is number => typeof x === "number" && Number.isFinite(x));
      return v.length ? v.reduce((a, b) => a + b, 0) / v.length : NaN;
    };
    const nonEmpty = r.filter((s) => s.batch_size > 0);
    const loss = avg((s) => (s.loss_plus + s.loss_minus) / 2, nonEmpty);
    const fwd = avg((s) => s.forward_s),
      pert = avg((s) => s.perturb_s),
      wait = avg((s) => s.wait_s);
    const total = fwd + pert + wait;
    const p = (x: number) => `${Math.round((100 * x) / total)}`;
    const g = avg((s) => Math.abs(s.ghat)), noise = avg((s) => s.noise_std);
    const sig = (x: number) => Number(x.toPrecision(2)).toString();
    return {
      loss: Number.isFinite(loss) ? loss.toFixed(4) : "-",
      acc: this.#accuracy !== null ? `${(this.#accuracy * 100).toFixed(1)}%` : undefined,
      eps: this.#epsilon !== null ? this.#epsilon.toFixed(3) : undefined,
      clip: this.#private
        ? `${(avg((s) => s.clipped_fraction, nonEmpty) * 100).toFixed(0)}%`
        : undefined,
      "|ghat|": Number.isFinite(g)
        ? (this.#private && noise > 0 ? `${sig(g)} (noise ${sig(noise)})` : sig(g))
        : undefined,
      "fwd/pert/wait": total > 0 ? `${p(fwd)}/${p(pert)}/${p(wait)}%` : undefined,
    };
  }
}
