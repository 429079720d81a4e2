/**
 * The messages of a DP-ZO step between the coordinator and the stage workers (DESIGN.md, "The
 * step over NATS"). The same messages flow through the in-process transport (the embedded
 * default) and over NATS, where they are validated with these zod schemas and encoded with
 * msgpackr.
 *
 * Parameter sync per worker per step is three small control messages (begin, flip, update):
 * a seed and scalars, whatever the model size. A step of K > 1 directions (DP-AggZO) adds K - 1
 * seeds to begin, K - 1 coefficients to update and 2 (K - 1) messages (next, flip): O(K) scalars.
 */
import { z } from "zod";
import { Packr } from "msgpackr";
import { createHmac, timingSafeEqual } from "node:crypto";

export const PROTOCOL_VERSION = 1;

/**
 * Every worker: theta += phi z(seed). With K > 1 directions `extra_seeds` are the K - 1
 * directions evaluated before `seed`, and the first of them is perturbed instead.
 */
export const StepBegin = z.object({
  type: z.literal("step.begin"),
  step: z.number().int().positive(),
  seed: z.string().regex(/^\d+$/),
  phi: z.number().positive(),
  extra_seeds: z.array(z.string().regex(/^\d+$/)).min(1).max(1023).optional(),
});
/** K > 1 directions, after a - pass: restore that direction (+phi), perturb the next (+phi). */
export const StepNext = z.object({
  type: z.literal("step.next"),
  step: z.number().int().positive(),
});
/** Every worker, after the + pass: theta -= 2 phi z(seed). */
export const StepFlip = z.object({
  type: z.literal("step.flip"),
  step: z.number().int().positive(),
});
/**
 * Every worker: theta += coeff z(seed) (restore and update in one pass), optional decay; with
 * K > 1 directions then theta += extra_coeffs[k] z(extra_seeds[k]) for each earlier direction.
 */
export const StepUpdate = z.object({
  type: z.literal("step.update"),
  step: z.number().int().positive(),
  coeff: z.number(),
  lr: z.number().nonnegative(),
  weight_decay: z.number().nonnegative(),
  extra_coeffs: z.array(z.number()).min(1).max(1023).optional(),
});
/**
 * Every worker: step `step` will not be released; get to exactly "steps 1..step-1 of the
 * ledger applied, nothing in flight" (over NATS a worker completes a step the ledger holds,
 * rebuilds its slice from a step it does not, and replays what it misses). After a fault the
 * coordinator sends it with step = ledger length + 1 to bring every worker to the ledger.
 */
export const StepAbort = z.object({
  type: z.literal("step.abort"),
  step: z.number().int().positive(),
});

export const ControlMessage = z.discriminatedUnion("type", [
  StepBegin,
  StepFlip,
  StepUpdate,
  StepAbort,
  StepNext,
]);
export type ControlMessage = z.infer<typeof ControlMessage>;

/**
 * A micro-batch: right-padded token rows (B x S, flattened) and the (position, token) pairs to
 * score; pair k belongs to score `pairScore[k]`. `sign` is +1 / -1 for the two ZO passes and 0
 * for evaluation.
 */
export interface ForwardRequest {
  step: number;
  micro: number;
  sign: 1 | -1 | 0;
  batchSize: number;
  seqLen: number;
  ids: Int32Array;
  mask: Int32Array;
  pairPos: Int32Array;
  pairTok: Int32Array;
  pairScore: Int32Array;
  numScores: number;
}

/** Mean log-probability per score, from the last stage. */
export interface ForwardResult {
  step: number;
  micro: number;
  sign: 1 | -1 | 0;
  scores: Float32Array;
}

// ---------------------------------------------------------------------------------------------
// On the wire (NATS): subjects, envelope, schemas, codec, chunking.
// ---------------------------------------------------------------------------------------------

/** A run id is one NATS subject token (and part of a JetStream stream name). */
export const RunId = z.string().regex(
  /^[A-Za-z0-9_-]{1,64}$/,
  "a run id is 1-64 letters, digits, '-' or '_'",
);

/**
 * The subjects of one run. Everything of a run lives under `dpzo.<run>.`. Who may publish and
 * subscribe to each is in cluster/nats_security.ts (`runPermissions`): a new subject that workers
 * publish on must be added there, or the generated server permissions refuse it.
 */
export function subjects(run: string) {
  const p = `dpzo.${run}`;
  return {
    /** Workers announce themselves (request/reply: the reply is the assignment). */
    hello: `${p}.hello`,
    /** A worker has loaded its slice (or failed to). */
    ready: `${p}.ready`,
    heartbeat: `${p}.heartbeat`,
    /**
     * A worker's own subject, subscribed on its connection for as long as it lives: a request
     * there answered "no responders" by the server means the worker's connection is gone.
     */
    alive: (worker: string) => `${p}.alive.${worker.replace(/[^A-Za-z0-9_-]/g, "_")}`,
    /** The coordinator's heartbeat (its epoch): a worker that sees a new one joins it again. */
    coordinator: `${p}.coordinator`,
    /** Control broadcast (step.begin / flip / update / abort); each worker acks on the reply. */
    control: `${p}.control`,
    /** Requests every worker answers on the reply subject: digests, stats. */
    query: `${p}.query`,
    shutdown: `${p}.shutdown`,
    /** Input of stage k of group g: the batch (k = 0) or the previous stage's activations. */
    forward: (group: number, stage: number) => `${p}.fwd.${group}.${stage}`,
    /** Scores from the last stage of every group back to the coordinator. */
    result: `${p}.result`,
    /** The run's metadata stream (JetStream): the config and the stage plan. */
    meta: `${p}.meta`,
    stream: `dpzo-${run}`,
  };
}

/** Who sent a message: the coordinator or a stage worker (defense in depth beside permissions). */
export type Role = "coordinator" | "worker";

/**
 * Every NATS message is `{v, run, from, body}` (`from` is the sender's role); anything else is
 * logged and dropped.
 */
export const Envelope = z.object({
  v: z.literal(PROTOCOL_VERSION),
  run: z.string(),
  from: z.enum(["coordinator", "worker"]).optional(),
  body: z.unknown(),
});

// ---------------------------------------------------------------------------------------------
// Message authentication. A run may have a secret key (32 random bytes that `dpzo launch`
// generates and hands to its processes, or DPZO_RUN_KEY); then every message of the run ends
// with a 16-byte tag, HMAC-SHA256(key, sender role || message), and a message without a valid
// tag is dropped. A client that can publish on the run's subjects but does not hold the key
// (another user of a shared NATS account, a stray process) cannot inject anything that is
// accepted. The key is per process and per run id, so that one process can serve several runs.
// ---------------------------------------------------------------------------------------------

const TAG_BYTES = 16;
const runKeys = new Map<string, Uint8Array>();

/** Sets (or with `null` clears) the secret key of a run for this process. */
export function useRunKey(run: string, key: Uint8Array | null): void {
  if (key === null) {
    runKeys.delete(run);
    return;
  }
  if (key.byteLength < 16) throw new Error("a run key has at least 16 bytes");
  runKeys.set(run, new Uint8Array(key));
}

/** Whether messages of `run` are authenticated in this process. */
export function hasRunKey(run: string): boolean {
  return runKeys.has(run);
}

/** A fresh random run key. */
export function newRunKey(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(32));
}

function tagOf(key: Uint8Array, role: Role, data: Uint8Array): Uint8Array {
  const h = createHmac("sha256", key);
  h.update(role === "coordinator" ? "dpzo/c/" : "dpzo/w/");
  h.update(data);
  return new Uint8Array(h.digest().buffer, 0, TAG_BYTES);
}

function seal(run: string, role: Role, data: Uint8Array): Uint8Array {
  const key = runKeys.get(run);
  if (!key) return data;
  const out = new Uint8Array(data.byteLength + TAG_BYTES);
  out.set(data);
  out.set(tagOf(key, role, data), data.byteLength);
  return out;
}

/**
 * The message without its tag when the run has a key and the tag is right for one of `roles`
 * (null, logged, when not); the message itself when the run has no key.
 */
function unseal(
  run: string,
  roles: readonly Role[],
  data: Uint8Array,
  log: (line: string) => void,
  what: string,
): Uint8Array | null {
  const key = runKeys.get(run);
  if (!key) return data;
  if (!(data instanceof Uint8Array) || data.byteLength <= TAG_BYTES) {
    log(`protocol: dropped ${what}: too short to carry an authentication tag`);
    return null;
  }
  const body = data.subarray(0, data.byteLength - TAG_BYTES);
  const tag = data.subarray(data.byteLength - TAG_BYTES);
  for (const role of roles) {
    if (timingSafeEqual(tagOf(key, role, body), tag)) return body;
  }
  log(
    `protocol: dropped ${what}: bad authentication tag (not from a ${
      roles.join(" or ")
    } of run ${run}: wrong or missing run key)`,
  );
  return null;
}

const bytes = z.custom<Uint8Array>((v) => v instanceof Uint8Array, "expected bytes");

export const StageRangeSchema = z.object({
  firstLayer: z.number().int().nonnegative(),
  endLayer: z.number().int().nonnegative(),
  embeddings: z.boolean(),
  head: z.boolean(),
});

export const Hello = z.object({
  worker: z.string().min(1),
  host: z.string(),
  pid: z.number().int(),
  /** The slot whose slice this worker already holds (rejoining a restarted coordinator). */
  holding: z.object({ group: z.number().int(), stage: z.number().int() }).optional(),
});
export const Assignment = z.discriminatedUnion("ok", [
  z.object({
    ok: z.literal(true),
    worker: z.string(),
    group: z.number().int().nonnegative(),
    stage: z.number().int().nonnegative(),
    stages: z.number().int().positive(),
    groups: z.number().int().positive(),
    range: StageRangeSchema,
    activation_dtype: z.enum(["float32", "float16"]),
    /** The coordinator's epoch (a restarted coordinator has a new one). */
    epoch: z.string().optional(),
    /** Steps in the ledger: the worker replays them before it reports ready. */
    ledger_step: z.number().int().nonnegative().optional(),
  }),
  z.object({ ok: z.literal(false), error: z.string() }),
]);
export type Assignment = z.infer<typeof Assignment>;

export const Ready = z.object({
  worker: z.string(),
  ok: z.boolean(),
  error: z.string().optional(),
  parameters: z.number().int().nonnegative().optional(),
  /** The ledger step the slice is at, and its hash (`sliceDigest`). */
  step: z.number().int().nonnegative().optional(),
  slice_sha256: z.string().optional(),
  /** The worker's matMul identity (src/tensor/blas.ts `matMulIdentity`). */
  matmul: z.string().max(200).optional(),
});
export const Heartbeat = z.object({ worker: z.string() });
/**
 * The coordinator's heartbeat: its epoch (a new one after a restart) and the workers that hold a
 * slot (a live worker missing from it was declared lost and joins again).
 */
export const CoordinatorBeat = z.object({
  epoch: z.string(),
  workers: z.array(z.string()).max(65536).optional(),
});
export const Ack = z.object({
  worker: z.string(),
  ok: z.boolean(),
  error: z.string().optional(),
  /** step.abort (recovery): the ledger step the slice is now at, and its hash. */
  step: z.number().int().nonnegative().optional(),
  slice_sha256: z.string().optional(),
});
export const Query = z.object({ type: z.enum(["digests", "stats"]) });
export const QueryReply = z.object({
  worker: z.string(),
  group: z.number().int(),
  stage: z.number().int(),
  digests: z.record(z.string(), z.string()).optional(),
  stats: z.object({
    /** Forward bytes this worker published during training passes (sign != 0) / evaluation. */
    activation_bytes_train: z.number(),
    activation_bytes_eval: z.number(),
    control_bytes: z.number(),
    forward_s: z.number(),
    perturb_s: z.number(),
  }).optional(),
});

/** One chunk of a forward payload (a batch, activations or scores), split under max_payload. */
export const Chunk = z.object({
  id: z.string(),
  index: z.number().int().nonnegative(),
  count: z.number().int().positive(),
  data: bytes,
});

/** The reassembled forward payload travelling down a pipeline. */
const ForwardPayloadFields = z.object({
  /** A request id chosen by the coordinator, carried to the result. */
  rid: z.number().int().nonnegative(),
  group: z.number().int().nonnegative(),
  step: z.number().int().nonnegative(),
  micro: z.number().int().nonnegative(),
  sign: z.union([z.literal(1), z.literal(-1), z.literal(0)]),
  batchSize: z.number().int().positive(),
  seqLen: z.number().int().positive(),
  numScores: z.number().int().nonnegative(),
  ids: bytes,
  mask: bytes,
  pairPos: bytes,
  pairTok: bytes,
  pairScore: bytes,
  /** Hidden states of the previous stage ([hidden, B*S]) in `dtype`; absent for stage 0. */
  hidden: bytes.optional(),
  dtype: z.enum(["float32", "float16"]).optional(),
});
export type ForwardPayload = z.infer<typeof ForwardPayloadFields>;
/** A forward payload whose arrays agree with its shape (`forwardPayloadError` without a model). */
export const ForwardPayload = ForwardPayloadFields.superRefine((p, ctx) => {
  const e = forwardPayloadError(p);
  if (e) ctx.addIssue({ code: "custom", message: e });
});

export const ResultPayload = z.object({
  rid: z.number().int().nonnegative(),
  worker: z.string(),
  step: z.number().int().nonnegative(),
  micro: z.number().int().nonnegative(),
  sign: z.union([z.literal(1), z.literal(-1), z.literal(0)]),
  scores: bytes.optional(),
  error: z.string().optional(),
});

// Typed arrays travel as raw bytes (msgpack bin); plain packing, no records/structures so that
// every message decodes on its own.
const packr = new Packr({ useRecords: false, moreTypes: false });

/**
 * Encodes a message of `run` sent by `from` (and tags it when the run has a key). Messages
 * without a role are accepted only by receivers that do not check it.
 */
export function encode(run: string, body: unknown, from?: Role): Uint8Array {
  const env = from ? { v: PROTOCOL_VERSION, run, from, body } : { v: PROTOCOL_VERSION, run, body };
  return seal(run, from ?? "coordinator", packr.pack(env));
}

/** msgpack of exactly one value (trailing bytes are an error); throws on anything else. */
function unpackOne(data: Uint8Array): unknown {
  const values = packr.unpackMultiple(data) as unknown[] | undefined;
  if (!values || values.length !== 1) {
    throw new Error(`${values?.length ?? 0} values where one was expected`);
  }
  return values[0];
}

/**
 * Decodes and validates a message; returns null (after logging why) for a missing or bad
 * authentication tag (when the run has a key), bad msgpack, another protocol version, another
 * run, another sender role than `from` (when given), or a body that fails its schema. Never
 * throws.
 */
export function decode<T>(
  data: Uint8Array,
  run: string,
  schema: z.ZodType<T>,
  log: (line: string) => void,
  what: string,
  from?: Role,
): T | null {
  const plain = unseal(run, from ? [from] : ["coordinator", "worker"], data, log, what);
  if (!plain) return null;
  let raw: unknown;
  try {
    raw = unpackOne(plain);
  } catch (e) {
    log(`protocol: dropped ${what}: not msgpack (${(e as Error).message})`);
    return null;
  }
  const env = Envelope.safeParse(raw);
  if (!env.success) {
    const v = (raw as { v?: unknown })?.v;
    log(
      `protocol: dropped ${what}: ${
        v !== undefined && v !== PROTOCOL_VERSION
          ? `protocol version ${v}, this process speaks ${PROTOCOL_VERSION}`
          : "not a dpzo envelope"
      }`,
    );
    return null;
  }
  if (env.data.run !== run) {
    log(`protocol: dropped ${what}: run ${env.data.run}, this process serves ${run}`);
    return null;
  }
  if (from && env.data.from !== from) {
    log(
      `protocol: dropped ${what}: sent by a ${
        env.data.from ?? "sender without a role"
      }, expected the ${from}`,
    );
    return null;
  }
  const body = schema.safeParse(env.data.body);
  if (!body.success) {
    const issue = body.error.issues[0];
    log(`protocol: dropped ${what}: ${issue?.path.join(".") || "body"}: ${issue?.message}`);
    return null;
  }
  return body.data;
}

/**
 * Control messages on the wire are compact tuples `[v, run, code, step, ...fields]`: they are the
 * whole parameter sync of a step, so every byte counts (about 45 + 3 x run-id bytes per step).
 */
const CONTROL_CODES = {
  "step.begin": 1,
  "step.flip": 2,
  "step.update": 3,
  "step.abort": 4,
  "step.next": 5,
} as const;

/** A one-direction step's messages are the tuples of before; K > 1 appends one array field. */
export function encodeControl(run: string, m: ControlMessage): Uint8Array {
  const head = [PROTOCOL_VERSION, run, CONTROL_CODES[m.type], m.step];
  const tuple = m.type === "step.begin"
    ? [...head, m.seed, m.phi, ...(m.extra_seeds ? [m.extra_seeds] : [])]
    : m.type === "step.update"
    ? [...head, m.coeff, m.lr, m.weight_decay, ...(m.extra_coeffs ? [m.extra_coeffs] : [])]
    : head;
  return seal(run, "coordinator", packr.pack(tuple));
}

const ControlTuple = z.tuple([z.number(), z.string(), z.number().int(), z.unknown()]).rest(
  z.unknown(),
);
/** Fields after the step, per control code: a tuple of another length is dropped. */
const CONTROL_FIELDS: Record<number, number[]> = {
  1: [2, 3],
  2: [0],
  3: [3, 4],
  4: [0],
  5: [0],
};

/**
 * Decodes and validates a control message (only the coordinator sends them: with a run key the
 * tag must be the coordinator's); null (logged) when invalid. Never throws.
 */
export function decodeControl(
  data: Uint8Array,
  run: string,
  log: (line: string) => void,
): ControlMessage | null {
  const plain = unseal(run, ["coordinator"], data, log, "control message");
  if (!plain) return null;
  let raw: unknown;
  try {
    raw = unpackOne(plain);
  } catch (e) {
    log(`protocol: dropped control message: not msgpack (${(e as Error).message})`);
    return null;
  }
  const t = ControlTuple.safeParse(raw);
  if (!t.success) {
    log("protocol: dropped control message: not a dpzo control tuple");
    return null;
  }
  const [v, r, code, step, ...rest] = t.data;
  if (v !== PROTOCOL_VERSION) {
    log(
      `protocol: dropped control message: protocol version ${v}, this process speaks ${PROTOCOL_VERSION}`,
    );
    return null;
  }
  if (r !== run) {
    log(`protocol: dropped control message: run ${r}, this process serves ${run}`);
    return null;
  }
  if (code in CONTROL_FIELDS && !CONTROL_FIELDS[code].includes(rest.length)) {
    log(`protocol: dropped control message: ${rest.length} fields after the step for code ${code}`);
    return null;
  }
  const type = Object.entries(CONTROL_CODES).find(([, c]) => c === code)?.[0];
  const obj = type === "step.begin"
    ? {
      type,
      step,
      seed: rest[0],
      phi: rest[1],
      ...(rest.length > 2 ? { extra_seeds: rest[2] } : {}),
    }
    : type === "step.update"
    ? {
      type,
      step,
      coeff: rest[0],
      lr: rest[1],
      weight_decay: rest[2],
      ...(rest.length > 3 ? { extra_coeffs: rest[3] } : {}),
    }
    : { type, step };
  const m = ControlMessage.safeParse(obj);
  if (!m.success) {
    const issue = m.error.issues[0];
    log(`protocol: dropped control message: ${issue?.path.join(".") || "body"}: ${issue?.message}`);
    return null;
  }
  return m.data;
}

/** Raw bytes of a typed array (a view, no copy). */
export function rawBytes(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** A copy into a fresh ArrayBuffer (msgpackr may hand out Node Buffers whose slice is a view). */
export function copyBytes(b: Uint8Array): ArrayBuffer {
  const c = new Uint8Array(b.byteLength);
  c.set(b);
  return c.buffer;
}

/** A copy of raw bytes as an aligned typed array. */
export function int32s(b: Uint8Array): Int32Array {
  if (b.byteLength % 4) throw new Error("int32 array: byte length is not a multiple of 4");
  return new Int32Array(copyBytes(b));
}
export function float32s(b: Uint8Array): Float32Array {
  if (b.byteLength % 4) throw new Error("float32 array: byte length is not a multiple of 4");
  return new Float32Array(copyBytes(b));
}

/** Splits an encoded payload into chunks of at most `max` bytes of data each. */
export function chunkPayload(id: string, payload: Uint8Array, max: number) {
  const count = Math.max(1, Math.ceil(payload.byteLength / max));
  const out: z.infer<typeof Chunk>[] = [];
  for (let i = 0; i < count; i++) {
    out.push({ id, index: i, count, data: payload.subarray(i * max, (i + 1) * max) });
  }
  return out;
}

/**
 * Reassembles chunked payloads; returns the whole payload when its last chunk arrives. At most
 * `maxPending` payloads are incomplete at once (the oldest is dropped), so chunks that never
 * complete (lost, or injected) cannot grow memory without bound.
 */
export class Reassembler {
  #parts = new Map<string, { got: number; parts: Uint8Array[] }>();
  constructor(readonly maxPending = 1024, readonly maxChunks = 1 << 16) {}
  add(c: z.infer<typeof Chunk>): Uint8Array | null {
    if (c.count === 1) return c.data;
    if (c.count > this.maxChunks) throw new Error(`chunk ${c.id}: ${c.count} chunks is too many`);
    let e = this.#parts.get(c.id);
    if (!e) {
      if (this.#parts.size >= this.maxPending) {
        this.#parts.delete(this.#parts.keys().next().value!);
      }
      this.#parts.set(c.id, e = { got: 0, parts: new Array(c.count) });
    }
    if (c.index >= c.count || e.parts.length !== c.count) {
      throw new Error(`chunk ${c.id}: bad index`);
    }
    if (!e.parts[c.index]) e.got++;
    e.parts[c.index] = c.data;
    if (e.got < c.count) return null;
    this.#parts.delete(c.id);
    const total = e.parts.reduce((n, p) => n + p.byteLength, 0);
    const out = new Uint8Array(total);
    let off = 0;
    for (const p of e.parts) {
      out.set(p, off);
      off += p.byteLength;
    }
    return out;
  }
  get pending(): number {
    return this.#parts.size;
  }
}

/**
 * Why a forward payload cannot be run by a stage of a model with these sizes (null when it can):
 * array lengths that disagree with the batch shape, token ids or positions out of range, scores
 * that point past `numScores`, activations of the wrong size. Checked before any tensor is made,
 * so a malformed or hostile payload costs no memory and changes nothing.
 */
export function forwardPayloadError(
  p: ForwardPayload,
  model: { vocabSize: number; hiddenSize: number; maxPositions: number } = {
    vocabSize: 2 ** 31,
    hiddenSize: 0,
    maxPositions: Infinity,
  },
  needsHidden = false,
  maxTokens = 1 << 22,
): string | null {
  const n = p.batchSize * p.seqLen;
  if (n > maxTokens) return `batch ${p.batchSize} x ${p.seqLen} is larger than ${maxTokens} tokens`;
  if (p.hidden && p.hidden.byteLength % ((p.dtype === "float16" ? 2 : 4) * n)) {
    return `activations of ${p.hidden.byteLength} bytes do not split into ${n} positions`;
  }
  if (p.seqLen > model.maxPositions) {
    return `sequence length ${p.seqLen} exceeds the model's ${model.maxPositions} positions`;
  }
  if (p.ids.byteLength !== 4 * n || p.mask.byteLength !== 4 * n) {
    return `ids/mask hold ${p.ids.byteLength}/${p.mask.byteLength} bytes, batch needs ${4 * n}`;
  }
  const pairs = p.pairPos.byteLength;
  if (pairs % 4 || p.pairTok.byteLength !== pairs || p.pairScore.byteLength !== pairs) {
    return "pairPos, pairTok and pairScore differ in length";
  }
  const ids = int32s(p.ids);
  for (const t of ids) if (t < 0 || t >= model.vocabSize) return `token id ${t} out of range`;
  const pos = int32s(p.pairPos), tok = int32s(p.pairTok), score = int32s(p.pairScore);
  for (let k = 0; k < pos.length; k++) {
    if (pos[k] < 0 || pos[k] >= n) return `pair ${k}: position ${pos[k]} out of range`;
    if (tok[k] < 0 || tok[k] >= model.vocabSize) return `pair ${k}: token ${tok[k]} out of range`;
    if (score[k] < 0 || score[k] >= p.numScores) return `pair ${k}: score ${score[k]} out of range`;
  }
  if (needsHidden) {
    if (!p.hidden) return "activations missing";
    const width = p.dtype === "float16" ? 2 : 4;
    if (p.hidden.byteLength !== width * model.hiddenSize * n) {
      return `activations hold ${p.hidden.byteLength} bytes, expected ${
        width * model.hiddenSize * n
      }`;
    }
  }
  return null;
}

/** Decodes a payload blob (the inner msgpack of reassembled chunks); null when invalid. */
export function decodeBlob<T>(
  blob: Uint8Array,
  schema: z.ZodType<T>,
  log: (line: string) => void,
  what: string,
): T | null {
  let raw: unknown;
  try {
    raw = unpackOne(blob);
  } catch (e) {
    log(`protocol: dropped ${what}: not msgpack (${(e as Error).message})`);
    return null;
  }
  const r = schema.safeParse(raw);
  if (!r.success) {
    const issue = r.error.issues[0];
    log(`protocol: dropped ${what}: ${issue?.path.join(".") || "body"}: ${issue?.message}`);
    return null;
  }
  return r.data;
}

export function encodeBlob(body: unknown): Uint8Array {
  return packr.pack(body);
}

// float16 on the wire (IEEE 754 binary16, round to nearest even).
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function toFloat16(src: Float32Array): Uint16Array {
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) {
    f32[0] = src[i];
    const x = u32[0];
    const sign = (x >>> 16) & 0x8000;
    const exp = (x >>> 23) & 0xff;
    let mant = x & 0x7fffff;
    if (exp === 0xff) {
      out[i] = sign | 0x7c00 | (mant ? 0x200 : 0);
      continue;
    }
    const e = exp - 127 + 15;
    if (e >= 0x1f) {
      out[i] = sign | 0x7c00;
      continue;
    }
    if (e <= 0) {
      if (e < -10) {
        out[i] = sign;
        continue;
      }
      mant |= 0x800000;
      const shift = 14 - e;
      let h = mant >>> shift;
      const rem = mant & ((1 << shift) - 1), half = 1 << (shift - 1);
      if (rem > half || (rem === half && (h & 1))) h++;
      out[i] = sign | h;
      continue;
    }
    let h = (e << 10) | (mant >>> 13);
    const rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++;
    out[i] = sign | h; // a carry into the exponent rounds up correctly (to inf at the top)
  }
  return out;
}

export function fromFloat16(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length);
  for (let i = 0; i < src.length; i++) {
    const h = src[i];
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >>> 10) & 0x1f, mant = h & 0x3ff;
    out[i] = exp === 0
      ? sign * mant * 2 ** -24
      : exp === 0x1f
      ? (mant ? NaN : sign * Infinity)
      : sign * (1 + mant / 1024) * 2 ** (exp - 15);
  }
  return out;
}
