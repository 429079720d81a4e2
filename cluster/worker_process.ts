/**
 * A stage worker process (`dpzo worker --nats URL --run ID`): joins a run, gets its slot
 * (replica group, pipeline stage, layer range) from the coordinator, reads the run's config
 * from JetStream, loads only its slice of the checkpoint, and then serves the step protocol
 * with the same state machine as the embedded default (`handleControl`, `forwardStage`).
 *
 * Invalid messages are logged and dropped; a control message the state machine refuses is
 * answered with an error ack (the coordinator fails the run with it), never a crash.
 *
 * Recovery: before it reports ready, a worker replays the run's ledger (the JetStream stream)
 * up to the step the coordinator names, and reports the hash of its slice. `step.abort(t)` brings
 * it to exactly step t - 1 (`syncWorker`: a step the ledger holds is completed, one it does not
 * is undone by reloading the slice and replaying — never by subtraction, which is not exact).
 * When the coordinator's heartbeat shows a new epoch (the coordinator was restarted), or no longer
 * lists this worker (it was declared lost while alive), the worker joins again, keeping its slice
 * when it gets the same slot back.
 *
 * Liveness: the connection reconnects without limit (nats-server restarted; a line every few
 * seconds names the URL); heartbeats come from a thread of their own (cluster/heartbeat.ts); and
 * the worker's own `alive` subject, subscribed for as long as its connection lives, lets the
 * coordinator see within seconds that the process is gone.
 */
import type { Msg, NatsConnection } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { z } from "zod";
import { parseRunConfig } from "../src/dpzo/config.ts";
import { openCheckpoint } from "../src/model/checkpoint.ts";
import { disposeStage } from "../src/model/opt.ts";
import { initBackend } from "../src/tensor/backend.ts";
import { matMulIdentity } from "../src/tensor/blas.ts";
import {
  Assignment,
  Chunk,
  chunkPayload,
  CoordinatorBeat,
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
import { connectRetrying, retryTransient, watchConnection } from "./nats_connect.ts";
import { startHeartbeatThread } from "./heartbeat.ts";
import {
  createStageWorker,
  forwardStage,
  handleControl,
  restoreSnapshot,
  saveSnapshot,
  sliceDigest,
  stageDigests,
  type StageWorker,
  syncWorker,
} from "./worker.ts";
import { streamEntry } from "./ledger_stream.ts";
import type { LedgerEntry } from "../src/checkpoint/ledger.ts";

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

/** Asks the coordinator for a slot until it answers. */
async function join(
  nc: NatsConnection,
  opts: WorkerOptions,
  id: string,
  deadline: number,
  holding?: { group: number; stage: number },
) {
  const S = subjects(opts.run);
  const log = opts.log ?? console.error;
  const hello = encode(opts.run, {
    worker: id,
    host: Deno.hostname(),
    pid: Deno.pid,
    ...(holding ? { holding } : {}),
  }, "worker");
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
    if (!a.ok && / has all \d+ workers/.test(a.error) && Date.now() < deadline) {
      // A spare: every slot is taken now; it takes the first one a lost worker frees.
      if (!waited) log(`worker ${id}: ${a.error}; waiting as a spare for a free slot`);
      waited = true;
      await new Promise((r) => setTimeout(r, 500));
      continue;
    }
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
  // A refused first connection is retried (the server may start later or be restarting),
  // with a line every few seconds naming the URL; so is a lost one, for as long as it takes.
  const nc = await connectRetrying(
    opts.url,
    `dpzo-worker-${id}`,
    connectOptions(opts.url, opts.security ?? {}, log),
    log,
    `worker ${id}`,
  );
  const deadline = Date.now() + (opts.joinTimeoutMs ?? 600_000);
  watchConnection(nc, opts.url, log, `worker ${id}`);
  // Subscribed for as long as this connection lives: the coordinator's probes there get "no
  // responders" from the server the moment this process is gone (a slot freed in seconds).
  nc.subscribe(S.alive(id), {
    callback: (err, msg) => {
      if (!err && msg.reply) msg.respond();
    },
  });
  const maxChunk = Math.max(1024, (nc.info?.max_payload ?? 1 << 20) - 4096);
  /** The fields that name a forward's result (or error) for the coordinator. */
  const resultOf = (p: { rid: number; step: number; micro: number; sign: number }) => ({
    rid: p.rid,
    worker: id,
    step: p.step,
    micro: p.micro,
    sign: p.sign,
  });
  // Heartbeats from the start: a worker loading its slice or replaying the ledger is alive. They
  // come from a thread of their own (a long forward holds this one) and, as a fallback, from here.
  const heartbeatMs = opts.heartbeatMs ?? 1000;
  const beat = setInterval(() => {
    try {
      nc.publish(S.heartbeat, send({ worker: id }));
    } catch { /* closing */ }
  }, heartbeatMs);
  const beatThread = startHeartbeatThread({
    url: opts.url,
    run,
    worker: id,
    intervalMs: heartbeatMs,
    security: opts.security ?? {},
    log: (l) => log(`worker ${id}: ${l}`),
  });
  let w: StageWorker | undefined;
  try {
    let a = await join(nc, opts, id, deadline);
    if (!a.ok) return;
    let me = `worker ${id} (group ${a.group}, stage ${a.stage})`;
    log(
      `${me}: layers ${a.range.firstLayer}..${a.range.endLayer - 1}` +
        `${a.range.embeddings ? " + embeddings" : ""}${a.range.head ? " + head" : ""}`,
    );

    // The run's config from JetStream, validated like a config file.
    const stored = await retryTransient(
      async () =>
        await (await jetstreamManager(nc)).streams.getMessage(S.stream, { last_by_subj: S.meta }),
      `worker ${id}: reading the run's config`,
      log,
    );
    if (!stored) throw new Error(`run ${run}: no config in stream ${S.stream}`);
    const meta = decode(stored.data, run, Meta, log, "run metadata", "coordinator");
    if (!meta) throw new Error(`run ${run}: the stored run metadata is invalid`);
    const config = parseRunConfig(meta.config, "run config from the coordinator");

    // Ledger entries from the run's stream (verified), cached: the same for every replay.
    const entries = new Map<number, LedgerEntry>();
    const entry = async (step: number) => {
      let e = entries.get(step);
      if (!e) {
        const got = await retryTransient(
          () => streamEntry(nc, run, step),
          `worker ${id}: ledger step ${step}`,
          log,
        );
        if (!got) throw new Error(`the ledger stream of run ${run} has no step ${step}`);
        entries.set(step, e = got);
      }
      return e;
    };
    await initBackend(config.backend);
    const ckpt = await openCheckpoint(config.model);
    /**
     * The slice of the current slot as of the newest snapshot at a step <= maxStep (the base
     * checkpoint, step 0, without one).
     */
    const load = async (maxStep = 0) => {
      if (!a.ok) throw new Error("no slot");
      if (w) disposeStage(w.stage);
      w = undefined;
      const { stage, trainable } = await loadRunStage(config, ckpt, a.range);
      return await restoreSnapshot(
        createStageWorker(stage, trainable),
        config.run_dir,
        a.stage,
        maxStep,
      );
    };
    const replayTo = async (L: number) => {
      const t0 = performance.now();
      const from = w!.appliedStep;
      w = await syncWorker(w!, L, entry, load);
      if (w.appliedStep !== from) {
        log(
          `${me}: at ledger step ${L} (replayed from ${from} in ${
            ((performance.now() - t0) / 1000).toFixed(1)
          } s)`,
        );
      }
    };

    /** Loads (or keeps) the slice, replays the ledger, reports ready with the slice hash. */
    const becomeReady = async (keep: boolean) => {
      if (!a.ok) return;
      try {
        if (!keep || !w) w = await load(a.ledger_step ?? 0);
        await replayTo(a.ledger_step ?? 0);
      } catch (e) {
        const error = (e as Error).message;
        nc.publish(S.ready, send({ worker: id, ok: false, error }));
        await nc.flush();
        throw e;
      }
      const parameters = [...w!.stage.weights.values()].reduce((n, t) => n + t.length, 0);
      nc.publish(
        S.ready,
        send({
          worker: id,
          ok: true,
          parameters,
          step: w!.appliedStep,
          slice_sha256: sliceDigest(w!),
          matmul: matMulIdentity(),
        }),
      );
      await nc.flush();
      log(`${me}: ready (${parameters} parameters, ${w!.trainable.length} trainable tensors)`);
    };

    let controlBytes = 0, trainBytes = 0, evalBytes = 0, forwardS = 0;
    let stop!: () => void;
    let fatal!: (e: Error) => void;
    const stopped = new Promise<void>((r) => (stop = r));
    const failed = new Promise<Error>((r) => (fatal = r));

    // Control messages one at a time, in order (a recovery replays asynchronously).
    let queue = Promise.resolve();
    nc.subscribe(S.control, {
      callback: (err, msg) => {
        if (err) return;
        controlBytes += msg.data.byteLength;
        const m = decodeControl(msg.data, run, log);
        if (!m) return;
        queue = queue.then(async () => {
          let error: string | undefined;
          let extra = {};
          try {
            if (m.type === "step.abort") {
              // Exactly step m.step - 1 of the ledger: complete, rebuild or replay.
              await replayTo(m.step - 1);
              extra = { step: w!.appliedStep, slice_sha256: sliceDigest(w!) };
            } else {
              handleControl(w!, m);
              // Group 0 writes the snapshots (every replica group holds the same slices).
              const every = config.train.snapshot_every;
              if (
                m.type === "step.update" && every > 0 && m.step % every === 0 && a.ok &&
                a.group === 0
              ) {
                await saveSnapshot(w!, config.run_dir, a.stage);
              }
            }
          } catch (e) {
            error = (e as Error).message;
            log(`${me}: ${error}`);
            if (m.type === "step.abort") fatal(e as Error);
          }
          if (msg.reply) {
            msg.respond(
              send({ worker: id, ok: !error, ...(error ? { error } : {}), ...extra }),
            );
          }
        });
      },
    });

    const publishBlob = (next: string, blob: Uint8Array, rid: number, sign: number) => {
      for (const c of chunkPayload(`${id}.${rid}`, blob, maxChunk)) {
        const data = send(c);
        nc.publish(next, data);
      }
      if (sign === 0) evalBytes += blob.byteLength;
      else trainBytes += blob.byteLength;
    };
    const subscribeForward = (slot: typeof a & { ok: true }) => {
      const next = slot.stage + 1 < slot.stages ? S.forward(slot.group, slot.stage + 1) : S.result;
      const chunks = new Reassembler();
      return nc.subscribe(S.forward(slot.group, slot.stage), {
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
            if (!w) throw new Error("the slice is being reloaded");
            let hidden: Float32Array | undefined;
            if (slot.stage > 0) {
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
                next,
                encodeBlob({ ...resultOf(p), scores: rawBytes(out.result.scores) }),
                p.rid,
                p.sign,
              );
            } else {
              const f16 = slot.activation_dtype === "float16";
              publishBlob(
                next,
                encodeBlob({
                  ...p,
                  hidden: rawBytes(f16 ? toFloat16(out.hidden!) : out.hidden!),
                  dtype: slot.activation_dtype,
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
                encodeBlob({ ...resultOf(p), error }),
                maxChunk,
              )
            ) nc.publish(S.result, send(c));
          }
        },
      });
    };
    let forwardSub = subscribeForward(a);

    nc.subscribe(S.query, {
      callback: (err, msg) => {
        if (err || !msg.reply || !w || !a.ok) return;
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
    // A new coordinator epoch (the coordinator was restarted, `--resume`), or a coordinator
    // that no longer lists this worker (it was declared lost while alive, e.g. cut off from the
    // server for longer than the heartbeat timeout): join it again, asking for the same slot.
    let rejoining = false;
    let unlisted = 0;
    const rejoin = (why: string) => {
      rejoining = true;
      log(`${me}: ${why}`);
      queue = queue.then(async () => {
        const held = a.ok ? { group: a.group, stage: a.stage } : undefined;
        const next = await join(nc, opts, id, Date.now() + 600_000, held);
        if (!next.ok) throw new Error("refused");
        const same = held !== undefined && next.group === held.group &&
          next.stage === held.stage;
        if (!same) {
          forwardSub.unsubscribe();
          forwardSub = subscribeForward(next);
        }
        a = next;
        me = `worker ${id} (group ${a.group}, stage ${a.stage})`;
        await becomeReady(same);
      }).catch((e) => fatal(e as Error)).finally(() => (rejoining = false));
    };
    nc.subscribe(S.coordinator, {
      callback: (err, msg) => {
        if (err || rejoining || !a.ok) return;
        const hb = decode(msg.data, run, CoordinatorBeat, log, "coordinator");
        if (!hb || a.epoch === undefined) return;
        let why: string;
        if (hb.epoch !== a.epoch) {
          why = `a new coordinator (epoch ${hb.epoch.slice(0, 8)})`;
        } else if (hb.workers && !hb.workers.includes(id)) {
          // Twice in a row: a beat sent just before this worker's assignment does not count.
          if (++unlisted < 2) return;
          why = "the coordinator no longer holds a slot for this worker";
        } else {
          unlisted = 0;
          return;
        }
        unlisted = 0;
        rejoin(`${why}; joining it again`);
      },
    });
    // A connection that dropped and came back lost what was sent meanwhile: join again (the
    // coordinator interrupts the step in flight).
    (async () => {
      for await (const st of nc.status()) {
        if (st.type === "reconnect" && !rejoining && a.ok) {
          rejoin("the connection to nats-server dropped and came back; joining again");
        }
      }
    })().catch(() => {});

    // Subscribe first, then announce "ready": the coordinator may send a control message the
    // moment it sees it (a replacement that announced before subscribing missed step.begin and
    // the run hung). Loading runs in the control queue, so a step.abort of a recovery that
    // arrives meanwhile is applied after the load, in order.
    queue = queue.then(() => becomeReady(false));
    await queue;

    let finished = false;
    const closed = nc.closed().then((
      e,
    ) => (finished ? null : e ?? new Error("the NATS connection closed")));
    try {
      const e = await Promise.race([stopped.then(() => null), closed, failed]);
      finished = true;
      if (e) throw e;
    } finally {
      if (w) disposeStage(w.stage);
    }
    log(`${me}: run ${run} finished`);
  } finally {
    clearInterval(beat);
    await beatThread.stop();
    if (!nc.isClosed()) await nc.drain().catch(() => {});
  }
}
