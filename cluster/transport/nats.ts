/**
 * The NATS transport, coordinator side: the same `Transport` as the in-process one, with the
 * stage workers in other processes (or machines) behind a `nats-server`.
 *
 * Membership: the coordinator publishes the run's config and stage plan to a JetStream stream,
 * answers each worker's `hello` with a slot (group g, stage k, layer range), and starts once
 * every slot has reported `ready` (its slice loaded and the ledger replayed). Workers send
 * heartbeats, and so does the coordinator (with its epoch: workers of a restarted coordinator
 * join it again, keeping their slices).
 *
 * Faults: a worker whose connection closed (its `alive` subject has no responders: the process
 * ended), a worker silent for `heartbeatTimeoutMs` (a host that vanished), or the connection to
 * the server dropping interrupts whatever is in flight with a `TransportFault`; the lost worker's
 * slot is freed for a replacement (a restarted `dpzo worker` or a spare). The connection
 * reconnects without limit (a restarted server); while a recovery waits, it says for what.
 * `recover(ledger)` then sends
 * step.abort(L + 1) to every worker — each gets to exactly the ledger's step L — waits for
 * replacements to load their slice and replay the ledger, checks that replicas of a stage report
 * the same slice hash, and resolves; the coordinator retries or continues.
 *
 * A step: control messages are broadcast on one subject and every worker acks on the reply
 * inbox after applying the pass, so `broadcast()` resolves when all have applied it. Micro-
 * batches go to stage 0 of a group, activations from stage k to stage k+1 (chunked under the
 * server's max_payload), and the last stage publishes the scores back.
 */
import { createInbox, type Msg, type NatsConnection } from "@nats-io/transport-node";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { z } from "zod";
import type { RunConfig } from "../../src/dpzo/config.ts";
import type { OptConfig } from "../../src/model/config.ts";
import type { StagePlan } from "../stage_plan.ts";
import { connectOptions, type NatsSecurity } from "../nats_security.ts";
import {
  connectRetrying,
  isNoResponders,
  retryTransient,
  watchConnection,
} from "../nats_connect.ts";
import {
  Ack,
  Chunk,
  chunkPayload,
  type ControlMessage,
  decode,
  decodeBlob,
  encode,
  encodeBlob,
  encodeControl,
  float32s,
  type ForwardRequest,
  type ForwardResult,
  Heartbeat,
  Hello,
  QueryReply,
  rawBytes,
  Ready,
  Reassembler,
  ResultPayload,
  subjects,
} from "../protocol.ts";
import { type Transport, TransportFault, type WorkerStats } from "./transport.ts";
import type { LedgerEntry } from "../../src/checkpoint/ledger.ts";

export interface NatsCoordinatorOptions {
  url: string;
  run: string;
  config: RunConfig;
  model: OptConfig;
  plan: StagePlan;
  log?: (line: string) => void;
  /** How long to wait for every worker to join and load its slice. */
  readyTimeoutMs?: number;
  /** A worker silent for this long fails the run. */
  heartbeatTimeoutMs?: number;
  /** How long one broadcast or forward may take. */
  opTimeoutMs?: number;
  /** Chunk size override (default: the server's max_payload less room for the envelope). */
  maxChunkBytes?: number;
  /** TLS and credentials for the server (README "Security"). */
  security?: NatsSecurity;
}

interface Slot {
  group: number;
  stage: number;
  worker?: string;
  host?: string;
  ready: boolean;
  lastSeen: number;
  /** The slice hash it reported at `ledgerStep` (recovery compares replicas). */
  digest?: string;
  /** Consecutive "alive" probes that the server answered with "no responders". */
  gone: number;
  /** An "alive" probe is in flight. */
  probing: boolean;
}

export interface NatsTransport extends Transport {
  readonly connection: NatsConnection;
  /**
   * Resolves when every slot has a worker that has loaded its slice and replayed the ledger's
   * `ledgerStep` steps (a resumed run).
   */
  ready(ledgerStep?: number): Promise<void>;
}

/** Connects, publishes the run's metadata, and starts admitting workers. */
export async function openNatsCoordinator(opts: NatsCoordinatorOptions): Promise<NatsTransport> {
  const log = opts.log ?? ((l: string) => console.error(l));
  const { run, plan } = opts;
  const S = subjects(run);
  /** A message of this run from the coordinator. */
  const send = (body: unknown) => encode(run, body, "coordinator");
  // Retried while the server is unreachable (at start, and across restarts of it).
  const nc = await connectRetrying(
    opts.url,
    `dpzo-coordinator-${run}`,
    connectOptions(opts.url, opts.security ?? {}, log),
    log,
    "coordinator",
  );
  const maxChunk = opts.maxChunkBytes ?? Math.max(1024, (nc.info?.max_payload ?? 1 << 20) - 4096);
  const opTimeout = opts.opTimeoutMs ?? 600_000;
  const hbTimeout = opts.heartbeatTimeoutMs ?? 30_000;
  const MONITOR_MS = 1000;
  /** How often the coordinator says what a recovery (or the start) still waits for. */
  const WAITING_MS = 5000;
  /**
   * After this process (re)connects, how long before "no responders" counts: the workers
   * reconnect and subscribe again at their own pace after a server restart.
   */
  const PROBE_GRACE_MS = 3000;

  // The run's metadata (config + plan) in JetStream: a worker needs only the URL and run id.
  // Made again while nats-server restarts (a coordinator restarted during an outage).
  await retryTransient(
    async () => {
      const jsm = await jetstreamManager(nc);
      try {
        await jsm.streams.delete(S.stream);
      } catch { /* no previous stream of that name */ }
      await jsm.streams.add({ name: S.stream, subjects: [S.meta], max_msgs_per_subject: 1 });
      await jetstream(nc).publish(S.meta, send({ config: opts.config, plan }));
    },
    "coordinator: publishing the run's metadata",
    log,
  );

  const slots: Slot[] = [];
  for (let g = 0; g < plan.groups; g++) {
    for (let k = 0; k < plan.stages; k++) {
      slots.push({ group: g, stage: k, ready: false, lastSeen: 0, gone: 0, probing: false });
    }
  }
  const label = (s: Slot) => `worker ${s.worker} (group ${s.group}, stage ${s.stage})`;

  let failure: Error | null = null;
  const failListeners = new Set<(e: Error) => void>();
  const fail = (e: Error) => {
    if (failure) return;
    failure = e;
    log(`coordinator: ${e.message}`);
    for (const f of failListeners) f(e);
  };
  /** Interrupts what is in flight (the run recovers); unlike `fail`, not permanent. */
  const fault = (e: TransportFault) => {
    log(`coordinator: ${e.message}`);
    for (const f of [...failListeners]) f(e);
  };
  /** The ledger's length: new and rejoining workers replay up to it before they are ready. */
  let ledgerStep = 0;
  const epoch = crypto.randomUUID();
  let connected = true;
  /** Races `p` against a failure of the run and a timeout. */
  const guarded = <T>(p: Promise<T>, what: string, ms = opTimeout): Promise<T> => {
    if (failure) return Promise.reject(failure);
    return new Promise<T>((resolve, reject) => {
      const onFail = (e: Error) => done(() => reject(e));
      const timer = setTimeout(
        // A live worker that missed a message would otherwise be waited for forever: the
        // step is interrupted and the run recovers (abort, then retry).
        () => done(() => reject(new TransportFault(`${what}: no answer within ${ms / 1000} s`))),
        ms,
      );
      let settled = false;
      const done = (f: () => void) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        failListeners.delete(onFail);
        f();
      };
      failListeners.add(onFail);
      p.then((v) => done(() => resolve(v)), (e) => done(() => reject(e)));
    });
  };

  let readyResolve!: () => void;
  let allReady!: Promise<void>;
  const resetReady = () => {
    allReady = new Promise<void>((r) => (readyResolve = r));
  };
  resetReady();
  const checkReady = () => {
    if (slots.every((s) => s.ready)) readyResolve();
  };
  /** A worker is gone: free its slot for a replacement and interrupt the step in flight. */
  const lose = (s: Slot, why: string) => {
    const what = `${label(s)} lost: ${why}; waiting for a replacement ` +
      `(dpzo worker --nats ${opts.url} --run ${run})`;
    s.worker = undefined;
    s.ready = false;
    s.digest = undefined;
    s.gone = 0;
    resetReady();
    fault(new TransportFault(what));
  };

  // A worker's assignment tells it the ledger step to replay to, which a resumed coordinator
  // knows only once it has opened the ledger (through this connection) and called ready(step).
  // Hellos that arrive before are answered then; answered earlier with step 0, such a worker
  // reported "ready at step 0", was ignored, and the resumed run waited for it forever.
  let ledgerKnown = false;
  const early: Msg[] = [];
  const answerHello = (msg: Msg) => {
    const h = decode(msg.data, run, Hello, log, "hello", "worker");
    if (!h) return;
    let slot = slots.find((s) => s.worker === h.worker);
    // Back after its connection dropped: what was sent to it meanwhile is lost, so the step in
    // flight is interrupted and it joins its slot afresh.
    if (slot?.ready) lose(slot, "its connection dropped and came back; it joins again");
    // A worker that holds a slice (a restarted coordinator) gets its own slot back if free.
    if (!slot && h.holding) {
      slot = slots.find((s) =>
        s.worker === undefined && s.group === h.holding!.group && s.stage === h.holding!.stage
      );
    }
    if (!slot) slot = slots.find((s) => s.worker === undefined);
    if (!slot) {
      msg.respond(
        send({ ok: false, error: `run ${run} has all ${slots.length} workers` }),
      );
      return;
    }
    slot.worker = h.worker;
    slot.host = h.host;
    slot.gone = 0;
    slot.lastSeen = Date.now();
    log(`coordinator: ${label(slot)} on ${h.host} (pid ${h.pid}) joined`);
    msg.respond(send({
      ok: true,
      worker: h.worker,
      group: slot.group,
      stage: slot.stage,
      stages: plan.stages,
      groups: plan.groups,
      range: plan.ranges[slot.stage],
      activation_dtype: opts.config.cluster.activation_dtype,
      epoch,
      ledger_step: ledgerStep,
    }));
  };
  nc.subscribe(S.hello, {
    callback: (err, msg) => {
      if (err) return;
      if (ledgerKnown) answerHello(msg);
      else early.push(msg);
    },
  });
  // Workers whose matMuls differ in their last bits compute slightly different losses for the
  // same micro-batch: the run stays consistent (every worker applies the same update) but is not
  // bit-reproducible across topologies. Said once per new identity.
  const matMuls = new Map<string, string>();
  const checkMatMul = (slot: Slot, matmul = "unknown") => {
    if (matMuls.has(matmul)) return;
    matMuls.set(matmul, label(slot));
    if (matMuls.size < 2) return;
    const [firstId, firstWorker] = [...matMuls][0];
    log(
      `coordinator: warning: ${label(slot)} computes matMuls with ${matmul}, ${firstWorker} ` +
        `with ${firstId}; losses differ in the last bits, so this run is not bit-reproducible ` +
        "on another topology: give every node the same DPZO_BLAS and OPENBLAS_CORETYPE (and " +
        "CPUs alike in fused multiply-add), or DPZO_BLAS=off",
    );
  };
  nc.subscribe(S.ready, {
    callback: (err, msg) => {
      if (err) return;
      const r = decode(msg.data, run, Ready, log, "ready", "worker");
      if (!r) return;
      const slot = slots.find((s) => s.worker === r.worker);
      if (msg.reply) msg.respond(send({ worker: r.worker, ok: slot !== undefined }));
      if (!slot) return;
      if (!r.ok) {
        fail(new Error(`${label(slot)} could not load its slice: ${r.error}`));
        return;
      }
      if (r.step !== undefined && r.step !== ledgerStep) {
        log(`coordinator: ${label(slot)} reported step ${r.step}, the ledger is at ${ledgerStep}`);
        return;
      }
      slot.ready = true;
      slot.lastSeen = Date.now();
      slot.digest = r.slice_sha256;
      checkMatMul(slot, r.matmul);
      log(
        `coordinator: ${label(slot)} ready (${r.parameters} parameters` +
          (r.step
            ? `, ledger replayed to step ${r.step}, slice ${r.slice_sha256?.slice(0, 12)}`
            : "") +
          ")",
      );
      checkReady();
    },
  });
  nc.subscribe(S.heartbeat, {
    callback: (err, msg) => {
      if (err) return;
      const h = decode(msg.data, run, Heartbeat, log, "heartbeat", "worker");
      const slot = h && slots.find((s) => s.worker === h.worker);
      if (slot) slot.lastSeen = Date.now();
    },
  });
  let lastTick = Date.now();
  let connectedSince = Date.now();
  /**
   * Fast failure detection: a request on a worker's own subject (which it subscribes for as long
   * as its connection lives) that the server answers "no responders" means that connection is
   * gone: the process exited, was killed, or lost the server. Twice in a row, with no heartbeat
   * for a few seconds (its heartbeat thread has a connection of its own), frees the slot at once
   * instead of after the heartbeat timeout. A worker that is only busy does not answer, which
   * is not "no responders".
   */
  const probe = (s: Slot) => {
    const worker = s.worker;
    if (worker === undefined || s.probing) return;
    s.probing = true;
    nc.request(S.alive(worker), undefined, { timeout: 2000 }).then(
      () => (s.gone = 0),
      (e) => {
        if (s.worker !== worker) return;
        if (!isNoResponders(e)) return void (s.gone = 0);
        const now = Date.now();
        if (!connected || now - connectedSince < PROBE_GRACE_MS) return;
        if (++s.gone >= 2 && now - s.lastSeen > 2500) {
          lose(s, "its connection to nats-server closed (the process ended or lost the server)");
        }
      },
    ).finally(() => (s.probing = false));
  };
  const monitor = setInterval(() => {
    // The coordinator's own heartbeat: workers of a restarted coordinator see a new epoch, and
    // a live worker it declared lost sees that it no longer holds a slot.
    if (connected) {
      try {
        nc.publish(
          S.coordinator,
          send({ epoch, workers: slots.flatMap((s) => (s.worker ? [s.worker] : [])) }),
        );
      } catch { /* closing */ }
    }
    const now = Date.now();
    // A late tick means this process itself was stalled (a starved CPU, a long synchronous piece
    // of work such as an accountant evaluation): the workers' heartbeats of that time are still
    // queued behind this timer, so that silence is not theirs.
    const stalled = now - lastTick - MONITOR_MS;
    lastTick = now;
    if (stalled > MONITOR_MS / 2) { for (const s of slots) s.lastSeen += stalled; }
    for (const s of slots) {
      // Silence while this process itself is cut off from the server says nothing of workers.
      if (connected && s.worker !== undefined && now - s.lastSeen > hbTimeout) {
        lose(s, `no heartbeat for ${((now - s.lastSeen) / 1000).toFixed(1)} s`);
      }
      if (connected) probe(s);
    }
  }, MONITOR_MS);
  watchConnection(nc, opts.url, log, "coordinator", (up) => {
    connected = up;
    if (up) {
      connectedSince = Date.now();
      for (const s of slots) {
        s.lastSeen = Date.now();
        s.gone = 0;
      }
    } else {
      fault(new TransportFault("connection to nats-server lost; reconnecting"));
    }
  });

  /** "group 0 stage 1 (no worker)", "group 1 stage 0 (worker w3, loading)": what is awaited. */
  const awaited = (s: Slot, doing: string) =>
    `group ${s.group} stage ${s.stage} (${
      s.worker ? `worker ${s.worker}, ${doing}` : "no worker"
    })`;

  // Results of forwards, by request id.
  const pending = new Map<
    number,
    {
      resolve: (r: ForwardResult) => void;
      reject: (e: Error) => void;
      /** What the result must match (a result of another step or micro-batch is dropped). */
      req: ForwardRequest;
    }
  >();
  const results = new Reassembler();
  let trainBytes = 0, evalBytes = 0, syncBytes = 0;
  const countForward = (sign: number, n: number) => {
    if (sign === 0) evalBytes += n;
    else trainBytes += n;
  };
  nc.subscribe(S.result, {
    callback: (err, msg) => {
      if (err) return;
      const c = decode(msg.data, run, Chunk, log, "result chunk", "worker");
      if (!c) return;
      let blob: Uint8Array | null;
      try {
        blob = results.add(c);
      } catch (e) {
        log(`protocol: dropped result chunk: ${(e as Error).message}`);
        return;
      }
      if (!blob) return;
      const r = decodeBlob(blob, ResultPayload, log, "result");
      if (!r) return;
      countForward(r.sign, blob.byteLength);
      const p = pending.get(r.rid);
      if (!p) {
        log(`protocol: dropped result ${r.rid}: no such request`);
        return;
      }
      const q = p.req;
      if (r.step !== q.step || r.micro !== q.micro || r.sign !== q.sign) {
        log(
          `protocol: dropped result ${r.rid}: step ${r.step}/${r.micro}/${r.sign} does not match ` +
            `the request's ${q.step}/${q.micro}/${q.sign}`,
        );
        return;
      }
      if (r.scores && r.scores.byteLength !== 4 * q.numScores) {
        log(
          `protocol: dropped result ${r.rid}: ${
            r.scores.byteLength / 4
          } scores, expected ${q.numScores}`,
        );
        return;
      }
      pending.delete(r.rid);
      if (r.error || !r.scores) {
        p.reject(new Error(`worker ${r.worker}: ${r.error ?? "no scores"}`));
      } else p.resolve({ step: r.step, micro: r.micro, sign: r.sign, scores: float32s(r.scores) });
    },
  });

  /**
   * Publishes `data` on `subject` with a private reply inbox and collects one valid reply per
   * worker in `expected` until all have answered or `until(all)` settles.
   */
  async function collect<T extends { worker: string }>(
    subject: string,
    data: Uint8Array,
    schema: z.ZodType<T>,
    what: string,
    expected: Set<string>,
    until: (all: Promise<void>) => Promise<void>,
    sayWaiting = false,
  ): Promise<Map<string, T>> {
    const got = new Map<string, T>();
    const inbox = createInbox();
    let resolve!: () => void;
    const all = new Promise<void>((r) => (resolve = r));
    const sub = nc.subscribe(inbox, {
      callback: (err, msg) => {
        if (err) return;
        const r = decode(msg.data, run, schema, log, `${what} reply`, "worker");
        if (!r || !expected.has(r.worker)) return;
        got.set(r.worker, r);
        if (got.size === expected.size) resolve();
      },
    });
    // A step held up by a worker says so every few seconds (who, and for how long).
    const t0 = Date.now();
    const saying = sayWaiting
      ? setInterval(() => {
        const missing = slots.filter((s) =>
          s.worker && expected.has(s.worker) && !got.has(s.worker)
        );
        if (!missing.length) return;
        log(
          `coordinator: ${what}: waiting ${((Date.now() - t0) / 1000).toFixed(0)} s for ` +
            missing.map((s) => awaited(s, "no answer yet")).join(", ") +
            (connected ? "" : `; nats-server at ${opts.url} unreachable`),
        );
      }, 2 * WAITING_MS)
      : undefined;
    try {
      nc.publish(subject, data, { reply: inbox });
      await until(all);
    } finally {
      clearInterval(saying);
      sub.unsubscribe();
    }
    return got;
  }

  /** Sends `data` to every worker on `subject` and gathers one reply per worker. */
  async function gather<T extends { worker: string }>(
    subject: string,
    data: Uint8Array,
    schema: z.ZodType<T>,
    what: string,
  ): Promise<Map<string, T>> {
    const missing = slots.filter((s) => !s.ready || s.worker === undefined);
    if (missing.length) {
      throw new TransportFault(`${what}: ${missing.map(label).join(", ")} not ready`);
    }
    const expected = new Set(slots.map((s) => s.worker!));
    return await collect(
      subject,
      data,
      schema,
      what,
      expected,
      (all) => guarded(all, what),
      true,
    );
  }

  /**
   * Like `gather` for recovery: the replies of `expected` within `ms`, whatever arrives; cut
   * short when a worker is lost meanwhile (a dead one among `expected` never answers).
   */
  function gatherSome<T extends { worker: string }>(
    subject: string,
    data: Uint8Array,
    schema: z.ZodType<T>,
    what: string,
    expected: Set<string>,
    ms: number,
  ): Promise<Map<string, T>> {
    return collect(subject, data, schema, what, expected, async (all) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      let onLoss: (() => void) | undefined;
      try {
        await Promise.race([
          all,
          new Promise<void>((r) => (timer = setTimeout(r, ms))),
          new Promise<void>((r) => failListeners.add(onLoss = () => r())),
        ]);
      } finally {
        clearTimeout(timer);
        failListeners.delete(onLoss!);
      }
    });
  }

  let nextRid = 0;
  let closed = false;
  const transport: NatsTransport = {
    connection: nc,
    groups: plan.groups,
    pipelineDepth: plan.stages + 1,
    async ready(step = 0) {
      ledgerStep = step;
      ledgerKnown = true;
      for (const msg of early.splice(0)) answerHello(msg);
      const ms = opts.readyTimeoutMs ?? 600_000;
      const deadline = Date.now() + ms;
      const t0 = Date.now();
      const saying = setInterval(() => {
        const missing = slots.filter((s) => !s.ready);
        if (!missing.length) return;
        log(
          `coordinator: waiting ${((Date.now() - t0) / 1000).toFixed(0)} s for ` +
            missing.map((s) => awaited(s, "loading its slice")).join(", ") +
            (connected ? "" : `; nats-server at ${opts.url} unreachable`),
        );
      }, 2 * WAITING_MS);
      try {
        while (!slots.every((s) => s.ready)) {
          try {
            await guarded(allReady, `waiting for ${slots.length} workers`, deadline - Date.now());
          } catch (e) {
            // A worker lost before the start: its slot waits for another.
            if (!(e instanceof TransportFault) || Date.now() >= deadline) throw e;
          }
        }
      } catch (e) {
        const missing = slots.filter((s) => !s.ready).map((s) =>
          `group ${s.group} stage ${s.stage}${s.worker ? ` (${s.worker}, loading)` : ""}`
        );
        throw new Error(
          `${(e as Error).message}; not ready: ${missing.join(", ")}. ` +
            `Start workers with: dpzo worker --nats ${opts.url} --run ${run}`,
        );
      } finally {
        clearInterval(saying);
      }
    },
    async broadcast(msg: ControlMessage) {
      // The step is in the ledger once released: a worker that joins from now on replays it
      // (one that rejoins mid-run holds it applied; an older step here would refuse its slice).
      if (msg.type === "step.update") ledgerStep = Math.max(ledgerStep, msg.step);
      const data = encodeControl(run, msg);
      syncBytes += data.byteLength;
      const acks = await gather(S.control, data, Ack, msg.type);
      const bad = [...acks.values()].filter((a) => !a.ok);
      if (bad.length) {
        throw new Error(
          `${msg.type} ${msg.step}: ${bad.map((a) => `worker ${a.worker}: ${a.error}`).join("; ")}`,
        );
      }
    },
    async recover(ledger: readonly LedgerEntry[]) {
      const L = ledger.length;
      ledgerStep = L;
      const ms = opts.readyTimeoutMs ?? 600_000;
      const deadline = Date.now() + ms;
      for (const s of slots) {
        s.ready = false;
        s.digest = undefined;
      }
      resetReady();
      const t0 = Date.now();
      let saidAt = t0;
      // step.abort(L + 1): every worker gets to exactly step L (idempotent, so resent freely).
      const abort = encodeControl(run, { type: "step.abort", step: L + 1 });
      for (let round = 0;; round++) {
        if (failure) throw failure;
        if (Date.now() > deadline) {
          const missing = slots.filter((s) => !s.ready).map((s) =>
            `group ${s.group} stage ${s.stage}${s.worker ? ` (${s.worker})` : " (no worker)"}`
          );
          throw new Error(
            `recovery: not every worker is back at step ${L} after ${ms / 1000} s: ` +
              `${
                missing.join(", ")
              }. Start workers with: dpzo worker --nats ${opts.url} --run ${run}`,
          );
        }
        const asked = new Set(
          slots.filter((s) => s.worker !== undefined && !s.ready).map((s) => s.worker!),
        );
        if (connected && asked.size) {
          syncBytes += abort.byteLength;
          const acks = await gatherSome(S.control, abort, Ack, "recovery", asked, 10_000);
          for (const a of acks.values()) {
            const slot = slots.find((s) => s.worker === a.worker);
            if (!slot) continue;
            if (!a.ok || a.step !== L) {
              log(`coordinator: ${label(slot)} could not get to step ${L}: ${a.error ?? a.step}`);
              continue;
            }
            slot.ready = true;
            slot.lastSeen = Date.now();
            slot.digest = a.slice_sha256;
          }
        }
        if (slots.every((s) => s.ready)) break;
        if (round === 0) {
          log(`coordinator: recovering: waiting for every slot to be back at step ${L}`);
        }
        if (Date.now() - saidAt >= WAITING_MS) {
          saidAt = Date.now();
          const missing = slots.filter((s) => !s.ready);
          log(
            `coordinator: recovering for ${((saidAt - t0) / 1000).toFixed(0)} s: waiting for ` +
              missing.map((s) => awaited(s, `replaying to step ${L}`)).join(", ") +
              (connected ? "" : `; nats-server at ${opts.url} unreachable`) +
              (missing.some((s) => !s.worker)
                ? `; a worker joins with: dpzo worker --nats ${opts.url} --run ${run}`
                : ""),
          );
        }
        let timer: ReturnType<typeof setTimeout> | undefined;
        await Promise.race([allReady, new Promise((r) => (timer = setTimeout(r, 1000)))]);
        clearTimeout(timer);
      }
      // Replicas of a stage hold the same slice: after recovery their hashes must agree.
      for (let k = 0; k < plan.stages; k++) {
        const ds = slots.filter((s) => s.stage === k && s.digest);
        if (ds.some((s) => s.digest !== ds[0].digest)) {
          throw new Error(
            `recovery: replicas of stage ${k} differ at step ${L}: ` +
              ds.map((s) => `${label(s)} ${s.digest!.slice(0, 12)}`).join(", "),
          );
        }
      }
      log(
        `coordinator: recovered: every worker at ledger step ${L} (slice hashes ` +
          slots.map((s) => `g${s.group}/s${s.stage} ${s.digest?.slice(0, 12)}`).join(", ") + ")",
      );
    },
    forward(group: number, req: ForwardRequest): Promise<ForwardResult> {
      if (failure) return Promise.reject(failure);
      const down = slots.filter((s) => s.group === group && (!s.ready || !s.worker));
      if (down.length) {
        return Promise.reject(
          new TransportFault(`forward: ${down.map(label).join(", ")} not ready`),
        );
      }
      const rid = nextRid++;
      const blob = encodeBlob({
        rid,
        group,
        step: req.step,
        micro: req.micro,
        sign: req.sign,
        batchSize: req.batchSize,
        seqLen: req.seqLen,
        numScores: req.numScores,
        ids: rawBytes(req.ids),
        mask: rawBytes(req.mask),
        pairPos: rawBytes(req.pairPos),
        pairTok: rawBytes(req.pairTok),
        pairScore: rawBytes(req.pairScore),
      });
      countForward(req.sign, blob.byteLength);
      const result = new Promise<ForwardResult>((resolve, reject) =>
        pending.set(rid, { resolve, reject, req })
      );
      for (const c of chunkPayload(`c${rid}`, blob, maxChunk)) {
        nc.publish(S.forward(group, 0), send(c));
      }
      return guarded(result, `forward ${req.step}/${req.micro} on group ${group}`).finally(() =>
        pending.delete(rid)
      );
    },
    async digests() {
      const replies = await gather(
        S.query,
        send({ type: "digests" }),
        QueryReply,
        "digests",
      );
      const byGroup = new Map<number, Map<string, string>>();
      for (const r of replies.values()) {
        const m = byGroup.get(r.group) ?? new Map<string, string>();
        byGroup.set(r.group, m);
        for (const [name, d] of Object.entries(r.digests ?? {})) {
          const prev = m.get(name);
          if (prev !== undefined && prev !== d) {
            throw new Error(`tied copies of ${name} differ between stages of group ${r.group}`);
          }
          m.set(name, d);
        }
      }
      const first = byGroup.get(0)!;
      for (const [g, m] of byGroup) {
        for (const [name, d] of m) {
          if (first.get(name) !== d) {
            throw new Error(`replica group ${g} diverged from group 0 at ${name}`);
          }
        }
      }
      return first;
    },
    paramSyncBytes: () => syncBytes,
    async activationBytes() {
      const stats = await this.workerStats!();
      return trainBytes + stats.reduce((n, s) => n + s.activation_bytes_train, 0);
    },
    async workerStats(): Promise<WorkerStats[]> {
      const replies = await gather(S.query, send({ type: "stats" }), QueryReply, "stats");
      return [...replies.values()].map((r) => ({
        worker: r.worker,
        group: r.group,
        stage: r.stage,
        host: slots.find((s) => s.worker === r.worker)?.host,
        ...r.stats!,
      })).sort((a, b) => a.group - b.group || a.stage - b.stage);
    },
    async close() {
      if (closed) return;
      closed = true;
      clearInterval(monitor);
      try {
        if (!nc.isClosed()) {
          nc.publish(S.shutdown, send({}));
          await nc.drain();
        }
      } catch (e) {
        log(`coordinator: closing the NATS connection: ${(e as Error).message}`);
      }
    },
  };
  return transport;
}
