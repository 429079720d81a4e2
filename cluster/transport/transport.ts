/**
 * The transport between the coordinator and the stage workers. Two implementations share this
 * interface: in-process (the embedded default, one process, no server) and NATS.
 */
import type { ControlMessage, ForwardRequest, ForwardResult } from "../protocol.ts";
import type { LedgerEntry } from "../../src/checkpoint/ledger.ts";

/**
 * A failure the run can recover from: a stage worker stopped answering, or the connection to
 * the server dropped. The coordinator answers it with `Transport.recover`: a step that was not
 * yet in the ledger is aborted (nothing was released, no privacy spent) and retried; a step that
 * was is completed.
 */
export class TransportFault extends Error {
  override name = "TransportFault";
}

/** Traffic and time of one stage worker (reported over NATS). */
export interface WorkerStats {
  worker: string;
  group: number;
  stage: number;
  host?: string;
  /** Forward bytes (activations, scores) the worker published in training passes. */
  activation_bytes_train: number;
  activation_bytes_eval: number;
  /** Control bytes it received (parameter sync). */
  control_bytes: number;
  forward_s: number;
  perturb_s: number;
}

export interface Transport {
  /** Replica groups (each a full pipeline of stages). */
  readonly groups: number;
  /** Micro-batches a group may have in flight at once (pipelining); 1 when absent. */
  readonly pipelineDepth?: number;
  /** Sends a control message to every worker; resolves when all have applied it. */
  broadcast(msg: ControlMessage): Promise<void>;
  /** Runs a micro-batch through one group's pipeline; resolves with the last stage's scores. */
  forward(group: number, req: ForwardRequest): Promise<ForwardResult>;
  /** SHA-256 of every tensor of group 0's stages (tied copies must agree). */
  digests(): Promise<Map<string, string>>;
  /** Bytes of control messages sent to each worker so far (parameter sync). */
  paramSyncBytes(): number;
  /**
   * Bytes of forward traffic in training passes so far: micro-batches to stage 0, activations
   * between stages, scores back (as encoded on the wire).
   */
  activationBytes(): Promise<number>;
  /**
   * After a `TransportFault`: brings every slot (a replacement where a worker was lost) to
   * exactly "ledger applied, no step in flight" — workers complete a step the ledger holds,
   * restore exactly (reload and replay) from one it does not, replay what they miss — and
   * resolves when all of them are there. Absent: faults end the run.
   */
  recover?(ledger: readonly LedgerEntry[]): Promise<void>;
  /** Per-worker traffic, where the transport can tell. */
  workerStats?(): Promise<WorkerStats[]>;
  close(): Promise<void>;
}
