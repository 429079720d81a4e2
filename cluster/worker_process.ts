/**
 * A stage worker process (`dpzo worker --nats URL --run ID`): joins a run, gets its slot
 * (replica group, pipeline stage, layer range) from the coordinator, reads the run's config
 * from JetStream, loads only its slice of the checkpoint, and then serves the step protocol
 * with the same state machine as the embedded default (`handleControl`, `forwardStage`).
 *
 * Invalid messages are logged and dropped; a control message the state machine refuses is
 * answered with an error ack (the coordinator fails the run with it), never a crash.
 */
import {
  connect,
  type Msg,
  type NatsConnection,
  type NodeConnectionOptions,
} from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { z } from "zod";
import { parseRunConfig } from "../src/dpzo/config.ts";
import { openCheckpoint } from "../src/model/checkpoint.ts";
import { disposeStage } from "../src/model/opt.ts";
import { initBackend } from "../src/tensor/backend.ts";
import {
  Assignment,
  Chunk,
  chunkPayload,
  copyBytes,
  decode,
  decodeBlob,
  decodeControl,
  encode,
  encodeBlob,
  float32s,
  ForwardPayload,
  fromFloat16,
  int32s,
  Query,
  rawBytes,
  Reassembler,
  subjects,
  toFloat16,
} from "./protocol.ts";
import { loadRunStage } from "./run.ts";
import { connectOptions, type NatsSecurity } from "./nats_security.ts";
import { createStageWorker, forwardStage, handleControl, stageDigests } from "./worker.ts";

export interface WorkerOptions {
  url: string;
  run: string;
  log?: (line: string) => void;
  /** A stable id (default: host-pid-random). */
  workerId?: string;
  /** How long to keep asking for a slot (the coordinator may start later). */
  joinTimeoutMs?: number;
  heartbeatMs?: number;
  /** TLS and credentials for the server (README "Security"). */
  security?: NatsSecurity;
}

const Meta = z.object({ config: z.unknown(), plan: z.unknown() });

async function connectWithRetry(
  url: string,
  name: string,
  deadline: number,
  security: Partial<NodeConnectionOptions> = {},
) {
  for (;;) {
    try {
      return await connect({ servers: url, name, maxReconnectAttempts: 10, ...security });
    } catch (e) {
      // Wrong credentials or certificates do not get better by waiting.
      if (
        /authori[sz]ation|authentication|certificate|tls|permission/i.test((e as Error).message)
      ) {
        throw new Error(`NATS at ${url} refused this worker: ${(e as Error).message}`);
      }
      if (Date.now() > deadline) {
        throw new Error(`cannot reach NATS at ${url}: ${(e as Error).message}`);
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

/** Asks the coordinator for a slot until it answers. */
async function join(nc: NatsConnection, opts: WorkerOptions, id: string, deadline: number) {
  const S = subjects(opts.run);
  const log = opts.log ?? console.error;
  const hello = encode(
    opts.run,
    { worker: id, host: Deno.hostname(), pid: Deno.pid },
    "worker",
  );
  let waited = false;
  for (;;) {
    let reply: Msg | undefined;
    try {
      reply = await nc.request(S.hello, hello, { timeout: 2000 });
    } catch {
      if (Date.now() > deadline) {
        throw new Error(`no coordinator for run ${opts.run} answered at ${opts.url}`);
      }
      if (!waited) log(`worker ${id}: waiting for the coordinator of run ${opts.run}`);
      waited = true;
      await new Promise((r) => setTimeout(r, 500));
      continue;
    }
    const a = decode(reply.data, opts.run, Assignment, log, "assignment", "coordinator");
    if (!a) throw new Error("the coordinator sent an invalid assignment");
    if (!a.ok) throw new Error(`the coordinator refused this worker: ${a.error}`);
    return a;
  }
}

/** Runs a worker until the coordinator shuts the run down (or the connection ends). */
export async function runWorker(opts: WorkerOptions): Promise<void> {
  const log = opts.log ?? ((l: string) => console.error(l));
  const run = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/).parse(opts.run);
  const S = subjects(run);
  /** A message of this run from this worker. */
  const send = (body: unknown) => encode(run, body, "worker");
  const id = opts.workerId ??
    `${Deno.hostname().split(".")[0]}-${Deno.pid}-${crypto.randomUUID().slice(0, 4)}`;
  const deadline = Date.now() + (opts.joinTimeoutMs ?? 600_000);
  const nc = await connectWithRetry(
    opts.url,
    `dpzo-worker-${id}`,
    deadline,
    connectOptions(opts.url, opts.security ?? {}, log),
  );
  const maxChunk = Math.max(1024, (nc.info?.max_payload ?? 1 << 20) - 4096);
  try {
    const a = await join(nc, opts, id, deadline);
    if (!a.ok) return;
    const me = `worker ${id} (group ${a.group}, stage ${a.stage})`;
    log(
      `${me}: layers ${a.range.firstLayer}..${a.range.endLayer - 1}` +
        `${a.range.embeddings ? " + embeddings" : ""}${a.range.head ? " + head" : ""}`,
    );

    // The run's config from JetStream, validated like a config file.
    const jsm = await jetstreamManager(nc);
    const stored = await jsm.streams.getMessage(S.stream, { last_by_subj: S.meta });
    if (!stored) throw new Error(`run ${run}: no config in stream ${S.stream}`);
    const meta = decode(stored.data, run, Meta, log, "run metadata", "coordinator");
    if (!meta) throw new Error(`run ${run}: the stored run metadata is invalid`);
    const config = parseRunConfig(meta.config, "run config from the coordinator");

    let worker;
    try {
      await initBackend(config.backend);
      const ckpt = await openCheckpoint(config.model);
      const { stage, trainable } = await loadRunStage(config, ckpt, a.range);
      worker = createStageWorker(stage, trainable);
    } catch (e) {
      const error = (e as Error).message;
      nc.publish(S.ready, send({ worker: id, ok: false, error }));
      await nc.flush();
      throw e;
    }
    const w = worker;
    const parameters = [...w.stage.params.values()].reduce((n, t) => n + t.size, 0);

    let controlBytes = 0, trainBytes = 0, evalBytes = 0, forwardS = 0;
    let stop!: () => void;
    const stopped = new Promise<void>((r) => (stop = r));

    nc.subscribe(S.control, {
      callback: (err, msg) => {
        if (err) return;
        controlBytes += msg.data.byteLength;
        const m = decodeControl(msg.data, run, log);
        if (!m) return;
        let error: string | undefined;
        try {
          handleControl(w, m);
        } catch (e) {
          error = (e as Error).message;
          log(`${me}: ${error}`);
        }
        if (msg.reply) {
          msg.respond(send({ worker: id, ok: !error, ...(error ? { error } : {}) }));
        }
      },
    });

    const next = a.stage + 1 < a.stages ? S.forward(a.group, a.stage + 1) : S.result;
    const publishBlob = (blob: Uint8Array, rid: number, sign: number) => {
      for (const c of chunkPayload(`${id}.${rid}`, blob, maxChunk)) {
        const data = send(c);
        nc.publish(next, data);
      }
      if (sign === 0) evalBytes += blob.byteLength;
      else trainBytes += blob.byteLength;
    };
    const chunks = new Reassembler();
    nc.subscribe(S.forward(a.group, a.stage), {
      callback: (err, msg) => {
        if (err) return;
        const c = decode(msg.data, run, Chunk, log, "forward chunk");
        if (!c) return;
        let blob: Uint8Array | null;
        try {
          blob = chunks.add(c);
        } catch (e) {
          log(`protocol: dropped forward chunk: ${(e as Error).message}`);
          return;
        }
        if (!blob) return;
        const p = decodeBlob(blob, ForwardPayload, log, "forward");
        if (!p) return;
        const t0 = performance.now();
        try {
          let hidden: Float32Array | undefined;
          if (a.stage > 0) {
            if (!p.hidden) throw new Error("activations missing");
            hidden = p.dtype === "float16"
              ? fromFloat16(new Uint16Array(copyBytes(p.hidden)))
              : float32s(p.hidden);
          }
          const req = {
            step: p.step,
            micro: p.micro,
            sign: p.sign,
            batchSize: p.batchSize,
            seqLen: p.seqLen,
            numScores: p.numScores,
            ids: int32s(p.ids),
            mask: int32s(p.mask),
            pairPos: int32s(p.pairPos),
            pairTok: int32s(p.pairTok),
            pairScore: int32s(p.pairScore),
          };
          const out = forwardStage(w, req, hidden);
          forwardS += (performance.now() - t0) / 1000;
          if (out.result) {
            publishBlob(
              encodeBlob({
                rid: p.rid,
                worker: id,
                step: p.step,
                micro: p.micro,
                sign: p.sign,
                scores: rawBytes(out.result.scores),
              }),
              p.rid,
              p.sign,
            );
          } else {
            const f16 = a.activation_dtype === "float16";
            publishBlob(
              encodeBlob({
                ...p,
                hidden: rawBytes(f16 ? toFloat16(out.hidden!) : out.hidden!),
                dtype: a.activation_dtype,
              }),
              p.rid,
              p.sign,
            );
          }
        } catch (e) {
          const error = `${me}: forward ${p.step}/${p.micro}: ${(e as Error).message}`;
          log(error);
          // Straight back to the coordinator, which fails the step with it.
          for (
            const c of chunkPayload(
              `${id}.e${p.rid}`,
              encodeBlob({
                rid: p.rid,
                worker: id,
                step: p.step,
                micro: p.micro,
                sign: p.sign,
                error,
              }),
              maxChunk,
            )
          ) nc.publish(S.result, send(c));
        }
      },
    });

    nc.subscribe(S.query, {
      callback: (err, msg) => {
        if (err || !msg.reply) return;
        const q = decode(msg.data, run, Query, log, "query", "coordinator");
        if (!q) return;
        const base = { worker: id, group: a.group, stage: a.stage };
        msg.respond(send(
          q.type === "digests" ? { ...base, digests: Object.fromEntries(stageDigests(w)) } : {
            ...base,
            stats: {
              activation_bytes_train: trainBytes,
              activation_bytes_eval: evalBytes,
              control_bytes: controlBytes,
              forward_s: forwardS,
              perturb_s: w.perturbSeconds,
            },
          },
        ));
      },
    });
    nc.subscribe(S.shutdown, {
      callback: (err, msg) => {
        if (err) return;
        if (decode(msg.data, run, z.object({}), log, "shutdown", "coordinator")) stop();
      },
    });

    const beat = setInterval(() => {
      try {
        nc.publish(S.heartbeat, send({ worker: id }));
      } catch { /* closing */ }
    }, opts.heartbeatMs ?? 1000);
    nc.publish(S.ready, send({ worker: id, ok: true, parameters }));
    await nc.flush();
    log(`${me}: ready (${parameters} parameters, ${w.trainable.length} trainable tensors)`);

    let finished = false;
    const closed = nc.closed().then((
      e,
    ) => (finished ? null : e ?? new Error("the NATS connection closed")));
    try {
      const e = await Promise.race([stopped.then(() => null), closed]);
      finished = true;
      if (e) throw e;
    } finally {
      clearInterval(beat);
      disposeStage(w.stage);
    }
    log(`${me}: run ${run} finished`);
  } finally {
    if (!nc.isClosed()) await nc.drain().catch(() => {});
  }
}
