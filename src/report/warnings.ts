/**
 * Warnings a user can act on, checked while a run trains:
 *
 * - clipping: over a rolling window of steps, the fraction of per-example projected gradients
 *   with |g_i| > C. Above 90% C is too small (almost every example is clipped, the update only
 *   keeps signs); below 1% C is too large (the noise sigma * C is larger than the signal needs).
 *   Each is printed once, with the fix.
 * - loss blow-up: the training loss growing far above where it started (a learning rate too
 *   large) stops the run with a message naming train.lr, before the weights turn into NaN.
 *   (A non-finite ghat is already refused by the coordinator before release.)
 *
 * The target-epsilon warning (the configured steps exceed the target) is raised by the privacy
 * plan (cluster/privacy_plan.ts) before the first step.
 */

export interface StepFigures {
  step: number;
  batch_size: number;
  loss_plus: number;
  loss_minus: number;
  clipped_fraction: number;
  mean_abs_g: number;
}

export interface RunWarning {
  step: number;
  kind: "clip_high" | "clip_low" | "target_epsilon" | "loss_blowup";
  message: string;
}

/** Stops a run whose loss blew up; the message names train.lr. */
export class LossBlowUpError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LossBlowUpError";
  }
}

export interface MonitorOptions {
  /** Clipping is only meaningful for a private run. */
  private: boolean;
  clip: number;
  lr: number;
  /** Total steps of the run (the clipping window shrinks to it for short runs). */
  steps: number;
  /** Rolling window of the clipping check (steps). */
  clipWindow?: number;
  /** Rolling window of the blow-up check (steps); its lowest mean so far is the reference. */
  recentWindow?: number;
  /** Stop when the recent mean loss exceeds this multiple of the reference (and by 1 nat). */
  blowUpFactor?: number;
  /**
   * Stop on a non-finite or blown-up loss (default true; train.stop_on_loss). The losses are
   * not noised, so the stop is a decision on the training data the privacy statement declares;
   * when false a blow-up is only warned about, once, and the run keeps to its plan.
   */
  stopOnLoss?: boolean;
}

/** A blow-up must also be this far above the reference (nats), so tiny losses do not trip it. */
export const BLOWUP_MARGIN = 1;

export const CLIP_HIGH = 0.9;
export const CLIP_LOW = 0.01;

const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
const pct = (x: number) => `${(x * 100).toFixed(x < 0.1 ? 1 : 0)}%`;
const num = (x: number) => Number(x.toPrecision(2));

export class RunMonitor {
  #o: Required<MonitorOptions>;
  #clip: { fraction: number; size: number; absG: number }[] = [];
  #recent: number[] = [];
  #lowest: number | null = null;
  #said = new Set<string>();

  constructor(opts: MonitorOptions) {
    this.#o = {
      clipWindow: Math.max(5, Math.min(50, opts.steps)),
      recentWindow: 3,
      blowUpFactor: 3,
      stopOnLoss: true,
      ...opts,
    };
  }

  /**
   * Observes one step's figures; returns the warnings raised now (each kind once). Throws
   * LossBlowUpError when the loss has blown up.
   */
  observe(m: StepFigures): RunWarning[] {
    const out: RunWarning[] = [];
    const o = this.#o;
    if (o.private && m.batch_size > 0) {
      this.#clip.push({ fraction: m.clipped_fraction, size: m.batch_size, absG: m.mean_abs_g });
      if (this.#clip.length > o.clipWindow) this.#clip.shift();
      if (this.#clip.length === o.clipWindow) {
        // Weighted by batch size: the fraction of all per-example g_i of the window.
        let clipped = 0, n = 0, absG = 0;
        for (const c of this.#clip) {
          clipped += c.fraction * c.size;
          absG += c.absG * c.size;
          n += c.size;
        }
        const f = clipped / n, g = absG / n;
        if (f > CLIP_HIGH && !this.#said.has("clip_high")) {
          this.#said.add("clip_high");
          out.push({
            step: m.step,
            kind: "clip_high",
            message:
              `WARNING: ${
                pct(f)
              } of per-example gradients were clipped over the last ${this.#clip.length} steps (|g_i| > C = ${o.clip}; mean |g_i| ${
                num(g)
              }): C is too small, the update ` +
              `keeps little more than signs. Raise privacy.clip (e.g. --set privacy.clip=${
                num(g)
              }, about the mean |g_i|).`,
          });
        } else if (f < CLIP_LOW && !this.#said.has("clip_low")) {
          this.#said.add("clip_low");
          out.push({
            step: m.step,
            kind: "clip_low",
            message: `WARNING: only ${pct(f)} of per-example gradients were clipped over the ` +
              `last ${this.#clip.length} steps (C = ${o.clip}; mean |g_i| ${num(g)}): C is ` +
              `larger than the gradients need, and the noise (sigma * C) is larger than it has ` +
              `to be. Lower privacy.clip (e.g. --set privacy.clip=${num(g)}, about the mean ` +
              `|g_i|).`,
          });
        }
      }
    }
    const loss = (m.loss_plus + m.loss_minus) / 2;
    if (m.batch_size > 0) {
      if (!Number.isFinite(loss) && !o.stopOnLoss) return out;
      if (!Number.isFinite(loss)) {
        throw new LossBlowUpError(
          `step ${m.step}: the training loss is ${loss}: the learning rate train.lr = ${o.lr} ` +
            `is too large; lower train.lr (e.g. --set train.lr=${num(o.lr / 10)}) and start a ` +
            `new run`,
        );
      }
      this.#recent.push(loss);
      if (this.#recent.length > o.recentWindow) this.#recent.shift();
      const now = mean(this.#recent);
      const ref = this.#lowest;
      if (
        ref !== null && this.#recent.length === o.recentWindow && now > o.blowUpFactor * ref &&
        now > ref + BLOWUP_MARGIN
      ) {
        const message =
          `step ${m.step}: the training loss blew up (mean ${
            num(now)
          } over the last ${this.#recent.length} steps, more than ${o.blowUpFactor}x where it started, ${
            num(ref)
          }): the learning ` +
          `rate train.lr = ${o.lr} is too large. The run stopped before the weights turned ` +
          `into NaN; lower train.lr (e.g. --set train.lr=${num(o.lr / 10)}) and start a new run.`;
        if (o.stopOnLoss) throw new LossBlowUpError(message);
        if (!this.#said.has("loss_blowup")) {
          this.#said.add("loss_blowup");
          out.push({
            step: m.step,
            kind: "loss_blowup",
            message: `WARNING: ${
              message.replace("The run stopped before the weights turned into NaN; ", "")
            } (train.stop_on_loss is false: the run goes on)`,
          });
        }
      }
      // The reference: the lowest running mean so far (a loss that blows up within the first
      // steps is still caught, and a loss that went down first is compared with its best).
      this.#lowest = ref === null ? now : Math.min(ref, now);
    }
    return out;
  }
}
