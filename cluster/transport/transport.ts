/**
 * The transport between the coordinator and the stage workers. Two implementations share this
 * interface: in-process (the embedded default, one process, no server) and NATS.
 */
import type { ControlMessage, ForwardRequest, ForwardResult } from "../protocol.ts";

export interface Transport {
  /** Replica groups (each a full pipeline of stages). */
  readonly groups: number;
  /** Sends a control message to every worker; resolves when all have applied it. */
  broadcast(msg: ControlMessage): Promise<void>;
  /** Runs a micro-batch through one group's pipeline; resolves with the last stage's scores. */
  forward(group: number, req: ForwardRequest): Promise<ForwardResult>;
  /** SHA-256 of every tensor of group 0's stages (tied copies must agree). */
  digests(): Promise<Map<string, string>>;
  /** Bytes of control messages sent to each worker so far (parameter sync). */
  paramSyncBytes(): number;
  close(): Promise<void>;
}
