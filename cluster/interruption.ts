/**
 * Ctrl-C (SIGINT) and SIGTERM during a run (`dpzo train`, `launch`, `coordinate`).
 *
 * The first signal asks the run to stop at the next safe point. A step that is not yet in the
 * ledger is abandoned: nothing of it was released and no privacy was spent (its perturbation
 * dies with the process; a resume rebuilds the weights from the ledger). A step already in the
 * ledger is released and complete: the ledger holds it, and the workers finish it now or replay
 * it on resume. The run then writes its report and a summary marked interrupted, and the command
 * prints one line:
 *
 *   interrupted at step N of T (epsilon so far E); continue with: dpzo train --resume DIR
 *
 * and exits with status 130. A second Ctrl-C exits at once.
 */

/** The run stopped on a signal after `step` released steps of `steps`. */
export class RunInterrupted extends Error {
  override name = "RunInterrupted";
  /** The line was already printed (before the report was written). */
  announced = false;
  constructor(
    readonly step: number,
    readonly steps: number,
    readonly epsilon: number | null = null,
    readonly continueWith = "",
  ) {
    super(interruptedLine(step, steps, epsilon, continueWith));
  }
}

/** The line a command prints when its run was interrupted. */
export function interruptedLine(
  step: number,
  steps: number,
  epsilon: number | null,
  continueWith: string,
): string {
  const eps = epsilon === null ? "no privacy accounting" : `epsilon so far ${fmtEpsilon(epsilon)}`;
  return `interrupted at step ${step} of ${steps} (${eps})` +
    (continueWith ? `; continue with: ${continueWith}` : "");
}

function fmtEpsilon(e: number): string {
  return e === 0 ? "0" : Number(e.toPrecision(4)).toString();
}

/** Throws RunInterrupted (at `step` released steps) when `stop` has fired. */
export function throwIfStopped(stop: AbortSignal | undefined, step: number, steps: number): void {
  if (stop?.aborted) throw new RunInterrupted(step, steps);
}

/**
 * `p`, or RunInterrupted as soon as `stop` fires: a run must not wait on a worker that the same
 * Ctrl-C has stopped. `p` keeps running; its outcome is dropped.
 */
export function unlessStopped<T>(
  p: Promise<T>,
  stop: AbortSignal | undefined,
  step: number,
  steps: number,
): Promise<T> {
  if (!stop) return p;
  if (stop.aborted) {
    p.catch(() => {});
    return Promise.reject(new RunInterrupted(step, steps));
  }
  return new Promise<T>((resolve, reject) => {
    const onStop = () => reject(new RunInterrupted(step, steps));
    stop.addEventListener("abort", onStop, { once: true });
    p.then(resolve, reject).finally(() => stop.removeEventListener("abort", onStop));
  });
}

export interface SignalWatch {
  /** Fires on the first SIGINT or SIGTERM. */
  signal: AbortSignal;
  /** Removes the handlers (the default action of a signal is back). */
  dispose(): void;
}

/**
 * Watches SIGINT and SIGTERM for a run: the first aborts `signal` and says what happens next; the
 * same signal again exits the process at once with status 130. The other signal after the first
 * is the same request: `dpzo launch` forwards a Ctrl-C to its coordinator as SIGTERM, and in a
 * terminal the coordinator also gets the SIGINT itself.
 */
export function watchSignals(log: (line: string) => void = (l) => console.error(l)): SignalWatch {
  const controller = new AbortController();
  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  const seen = new Set<Deno.Signal>();
  const handlers = signals.map((sig) => {
    const handler = () => {
      if (seen.has(sig)) {
        log(`${sig} again: exiting now`);
        Deno.exit(130);
      }
      seen.add(sig);
      if (seen.size > 1) return; // the same request by its other signal
      log(
        `\n${sig}: stopping at the next safe point (a step not yet in the ledger is dropped: ` +
          `no privacy spent); press Ctrl-C again to exit at once`,
      );
      controller.abort(sig);
    };
    Deno.addSignalListener(sig, handler);
    return { sig, handler };
  });
  return {
    signal: controller.signal,
    dispose() {
      for (const { sig, handler } of handlers) Deno.removeSignalListener(sig, handler);
    },
  };
}
