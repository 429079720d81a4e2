/**
 * A run's time and traffic across its segments. A run that was interrupted (Ctrl-C) or crashed
 * and then resumed is several processes, each of which counts only its own time and traffic.
 * Every segment that ends in the coordinator's hands (finished, interrupted, stopped on an error)
 * appends a `segment` event to metrics.jsonl:
 *
 *   {"event": "segment", "from_step": 0, "to_step": 40, "wall_s": 9.6,
 *    "param_sync_bytes": 6160, "activation_bytes": 384000}
 *
 * and the summary of a resumed run adds the segments before it to its own figures, so that it
 * covers the whole run. A segment that crashed wrote no event: its steps count in the wall time
 * by their own step times (a lower bound) and are left out of the per-step traffic averages.
 */

export interface SegmentFigures {
  /** Steps released in the segment(s). */
  steps: number;
  wall_s: number;
  /** Parameter-sync bytes per worker. */
  param_sync_bytes: number;
  /** Forward traffic of training passes. */
  activation_bytes: number;
}

export interface SegmentEvent extends SegmentFigures {
  event: "segment";
  from_step: number;
  to_step: number;
}

/** The event a segment appends to metrics.jsonl when it ends. */
export function segmentEvent(
  fromStep: number,
  toStep: number,
  figures: Omit<SegmentFigures, "steps">,
): SegmentEvent {
  return {
    event: "segment",
    from_step: fromStep,
    to_step: toStep,
    steps: toStep - fromStep,
    ...figures,
  };
}

/**
 * The figures of the segments recorded in a metrics.jsonl before this one, for steps up to
 * `upTo`: recorded segments as they are, plus the step times of steps no segment covers.
 */
export function earlierSegments(metricsText: string, upTo: number): SegmentFigures {
  const total: SegmentFigures = { steps: 0, wall_s: 0, param_sync_bytes: 0, activation_bytes: 0 };
  const covered = new Set<number>();
  const stepTimes = new Map<number, number>();
  for (const line of metricsText.split("\n")) {
    let m;
    try {
      m = JSON.parse(line);
    } catch {
      continue; // an empty or partial last line
    }
    if (m?.event === "segment" && Number.isFinite(m.wall_s)) {
      total.steps += m.to_step - m.from_step;
      total.wall_s += m.wall_s;
      total.param_sync_bytes += m.param_sync_bytes ?? 0;
      total.activation_bytes += m.activation_bytes ?? 0;
      for (let s = m.from_step + 1; s <= m.to_step; s++) covered.add(s);
    } else if (m?.event === undefined && typeof m?.step === "number") {
      if (Number.isFinite(m.step_s)) stepTimes.set(m.step, m.step_s);
    }
  }
  for (const [step, t] of stepTimes) if (step <= upTo && !covered.has(step)) total.wall_s += t;
  return total;
}

/** Per-step average of a whole run: figures of every segment over the steps they counted. */
export function perStep(bytes: number, steps: number): number {
  return steps > 0 ? bytes / steps : 0;
}
