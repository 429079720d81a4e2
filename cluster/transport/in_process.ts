/**
 * The in-process transport: coordinator and stage workers in one process, messages passed as
 * plain values. It is the embedded default of `dpzo train`; the coordinator and worker code are
 * the same as over NATS.
 */
import { pack } from "msgpackr";
import type { ControlMessage, ForwardRequest, ForwardResult } from "../protocol.ts";
import {
  forwardStage,
  handleControl,
  stageDigests,
  type StageWorker,
  syncWorker,
} from "../worker.ts";
import type { Transport } from "./transport.ts";
import type { LedgerEntry } from "../../src/checkpoint/ledger.ts";

/**
 * `pipelines[g][k]` is stage k of replica group g. `rebuild(g, k)` loads stage k afresh (the
 * base slice, no step applied): recovery uses it to restore a stage exactly from a step that was
 * not released; without it, such a stage is reverted by subtraction (not bit-exact).
 */
export function inProcessTransport(
  pipelines: StageWorker[][],
  opts: {
    rebuild?: (group: number, stage: number) => Promise<StageWorker>;
    /** After each worker applied a step's update (snapshots). */
    afterUpdate?: (group: number, stage: number, w: StageWorker) => Promise<void>;
  } = {},
): Transport {
  let syncBytes = 0, actBytes = 0;
  // What the same traffic would weigh on the wire (raw typed-array bytes).
  const requestBytes = (r: ForwardRequest) =>
    r.ids.byteLength + r.mask.byteLength + r.pairPos.byteLength + r.pairTok.byteLength +
    r.pairScore.byteLength;
  return {
    groups: pipelines.length,
    async broadcast(msg: ControlMessage) {
      // Counted as it would be encoded on the wire, per worker.
      syncBytes += pack(msg).length;
      for (const pipeline of pipelines) for (const w of pipeline) handleControl(w, msg);
      if (msg.type === "step.update" && opts.afterUpdate) {
        for (const [g, pipeline] of pipelines.entries()) {
          for (const [k, w] of pipeline.entries()) await opts.afterUpdate(g, k, w);
        }
      }
    },
    forward(group: number, req: ForwardRequest): Promise<ForwardResult> {
      let hidden: Float32Array | undefined;
      const training = req.sign !== 0;
      if (training) actBytes += requestBytes(req);
      for (const w of pipelines[group]) {
        const out = forwardStage(w, req, hidden);
        if (out.result) {
          if (training) actBytes += out.result.scores.byteLength;
          return Promise.resolve(out.result);
        }
        hidden = out.hidden;
        if (training) actBytes += hidden!.byteLength;
      }
      return Promise.reject(new Error("in-process transport: the pipeline has no head stage"));
    },
    digests() {
      const all = new Map<string, string>();
      for (const w of pipelines[0]) {
        for (const [name, d] of stageDigests(w)) {
          const prev = all.get(name);
          if (prev !== undefined && prev !== d) {
            throw new Error(`tied copies of ${name} differ between stages`);
          }
          all.set(name, d);
        }
      }
      return Promise.resolve(all);
    },
    async recover(ledger: readonly LedgerEntry[]) {
      const L = ledger.length;
      for (const [g, pipeline] of pipelines.entries()) {
        for (const [k, w] of pipeline.entries()) {
          const rebuild = opts.rebuild ? () => opts.rebuild!(g, k) : () => {
            if (w.current) handleControl(w, { type: "step.abort", step: w.current.step });
            return Promise.resolve(w);
          };
          pipeline[k] = await syncWorker(w, L, (s) => Promise.resolve(ledger[s - 1]), rebuild);
        }
      }
    },
    paramSyncBytes: () => syncBytes,
    activationBytes: () => Promise.resolve(actBytes),
    close: () => Promise.resolve(),
  };
}
