/**
 * The transport between the coordinator and the stage workers. Two implementations share this
 * interface: in-process (the embedded default, one process, no server) and NATS.
 */
import type { ControlMessage, ForwardRequest, ForwardResult } from "../protocol.ts";

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
  /** Per-worker traffic, where the transport can tell. */
  workerStats?(): Promise<WorkerStats[]>;
  close(): Promise<void>;
}
