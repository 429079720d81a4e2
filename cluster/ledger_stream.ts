/**
 * The ledger of a run over NATS: a JetStream stream (file storage, in the server's store),
 * `dpzo-<run>-ledger` on subject `dpzo.<run>.ledger`, one message per released step whose data
 * is exactly the ledger line (with its checksum), and stream sequence = step.
 *
 * The coordinator publishes a step's line with `Nats-Msg-Id = <run>:<step>` and the expected
 * last sequence step - 1, and waits for the stream's acknowledgement; it retries across a
 * server restart (the message id makes a retried publish a no-op if the first one was stored).
 * Only then does it append the same line to the run directory's `ledger.jsonl` (fsync), and only
 * then is the update broadcast.
 *
 * Which copy is authoritative: the stream, while the run is live (it is what workers replay
 * from, and it survives the coordinator's machine). Since the file is written after the
 * stream's acknowledgement, the file is the stream or the stream less its last entry. On resume
 * the two are reconciled: they must agree on their common prefix (else the resume stops and
 * names both); the longer one completes the other (the stream's extra entry is appended to the
 * file; a file ahead of the stream — the stream was lost — is published again). `export` reads
 * the file.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import {
  encodeLedgerLine,
  type LedgerEntry,
  type LedgerSink,
  LedgerWriter,
  parseLedgerLine,
  readLedger,
} from "../src/checkpoint/ledger.ts";
import { subjects } from "./protocol.ts";

const dec = new TextDecoder(), enc = new TextEncoder();
/** How long a duplicate publish (same step) is recognised: the longest server outage covered. */
const DUPLICATE_WINDOW_NS = 30 * 60 * 1e9;

export function ledgerStreamName(run: string): string {
  return `${subjects(run).stream}-ledger`;
}
export function ledgerSubject(run: string): string {
  return `dpzo.${run}.ledger`;
}

/** Entry `step` of a run's ledger stream, verified; null when the stream does not have it. */
export async function streamEntry(
  nc: NatsConnection,
  run: string,
  step: number,
): Promise<LedgerEntry | null> {
  const jsm = await jetstreamManager(nc);
  const name = ledgerStreamName(run);
  let m;
  try {
    m = await jsm.streams.getMessage(name, { seq: step });
  } catch (e) {
    if (/no message found|not found/i.test((e as Error).message)) return null;
    throw e;
  }
  if (!m) return null;
  const entry = parseLedgerLine(dec.decode(m.data).trimEnd(), `stream ${name} message ${step}`);
  if (entry.step !== step) {
    throw new Error(`stream ${name} message ${step}: holds step ${entry.step}`);
  }
  return entry;
}

/** Every entry of the stream (empty when it does not exist). */
async function readStream(nc: NatsConnection, run: string): Promise<LedgerEntry[]> {
  const jsm = await jetstreamManager(nc);
  let last = 0;
  try {
    last = (await jsm.streams.info(ledgerStreamName(run))).state.last_seq;
  } catch {
    return [];
  }
  const out: LedgerEntry[] = [];
  for (let s = 1; s <= last; s++) {
    const e = await streamEntry(nc, run, s);
    if (!e) throw new Error(`stream ${ledgerStreamName(run)}: message ${s} is missing`);
    out.push(e);
  }
  return out;
}

async function ensureStream(nc: NatsConnection, run: string, fresh: boolean): Promise<void> {
  const jsm = await jetstreamManager(nc);
  const name = ledgerStreamName(run);
  if (fresh) {
    try {
      await jsm.streams.delete(name);
    } catch { /* none */ }
  }
  try {
    await jsm.streams.info(name);
  } catch {
    await jsm.streams.add({
      name,
      subjects: [ledgerSubject(run)],
      // deno-lint-ignore no-explicit-any
      duplicate_window: DUPLICATE_WINDOW_NS as any,
    });
  }
}

/** The coordinator's ledger over NATS: stream first (acknowledged), then the local file. */
export class StreamLedger implements LedgerSink {
  #nc: NatsConnection;
  #run: string;
  #file: LedgerWriter;
  #log: (l: string) => void;
  #timeoutMs: number;
  private constructor(
    nc: NatsConnection,
    run: string,
    file: LedgerWriter,
    log: (l: string) => void,
    timeoutMs: number,
  ) {
    this.#nc = nc;
    this.#run = run;
    this.#file = file;
    this.#log = log;
    this.#timeoutMs = timeoutMs;
  }

  /**
   * Opens the ledger of a run: a fresh run starts an empty stream (an old one of the same run
   * id is deleted); a resumed run reconciles the stream with `path` and returns the entries.
   */
  static async open(
    nc: NatsConnection,
    run: string,
    path: string,
    opts: { resume: boolean; log?: (l: string) => void; timeoutMs?: number },
  ): Promise<{ ledger: StreamLedger; entries: LedgerEntry[] }> {
    const log = opts.log ?? ((l: string) => console.error(l));
    await ensureStream(nc, run, !opts.resume);
    let entries: LedgerEntry[] = [];
    if (opts.resume) {
      let fileEntries: LedgerEntry[] = [];
      try {
        fileEntries = await readLedger(path);
      } catch (e) {
        if (!/ledger not found/.test((e as Error).message)) throw e;
      }
      const streamEntries = await readStream(nc, run);
      const n = Math.min(fileEntries.length, streamEntries.length);
      for (let i = 0; i < n; i++) {
        if (encodeLedgerLine(fileEntries[i]) !== encodeLedgerLine(streamEntries[i])) {
          throw new Error(
            `${path}:${i + 1} and stream ${ledgerStreamName(run)} message ${i + 1} disagree ` +
              `on step ${i + 1}; nothing was changed: keep the right copy and remove the other`,
          );
        }
      }
      entries = streamEntries.length >= fileEntries.length ? streamEntries : fileEntries;
      const file = await LedgerWriter.open(path);
      const ledger = new StreamLedger(nc, run, file, log, opts.timeoutMs ?? 300_000);
      for (const e of streamEntries.slice(n)) await file.append(e);
      for (const e of fileEntries.slice(n)) await ledger.#publish(e);
      if (streamEntries.length !== fileEntries.length) {
        log(
          `ledger: stream has ${streamEntries.length} steps, ${path} ${fileEntries.length}; ` +
            `completed the shorter from the longer`,
        );
      }
      return { ledger, entries };
    }
    const file = await LedgerWriter.open(path);
    return {
      ledger: new StreamLedger(nc, run, file, log, opts.timeoutMs ?? 300_000),
      entries,
    };
  }

  /** Publishes until the stream acknowledges (across reconnects); idempotent per step. */
  async #publish(entry: LedgerEntry): Promise<void> {
    const js = jetstream(this.#nc);
    const data = enc.encode(encodeLedgerLine(entry));
    const deadline = Date.now() + this.#timeoutMs;
    let said = false;
    for (;;) {
      try {
        await js.publish(ledgerSubject(this.#run), data, {
          msgID: `${this.#run}:${entry.step}`,
          expect: { lastSequence: entry.step - 1 },
          timeout: 5000,
        });
        if (said) this.#log(`ledger: step ${entry.step} stored in the stream`);
        return;
      } catch (e) {
        const msg = (e as Error).message;
        if (/wrong last sequence/i.test(msg)) {
          // Stored by an earlier attempt whose acknowledgement was lost? Then it is done.
          const have = await streamEntry(this.#nc, this.#run, entry.step).catch(() => null);
          if (have && encodeLedgerLine(have) === encodeLedgerLine(entry)) return;
          throw new Error(
            `ledger: stream ${ledgerStreamName(this.#run)} does not continue at step ` +
              `${entry.step} (${msg}); the step was not released`,
          );
        }
        if (Date.now() > deadline) {
          throw new Error(
            `ledger: step ${entry.step} not acknowledged by stream ` +
              `${ledgerStreamName(this.#run)} within ${this.#timeoutMs / 1000} s (${msg}); ` +
              `the step was not released`,
          );
        }
        if (!said) {
          this.#log(`ledger: step ${entry.step}: ${msg}; retrying until the stream answers`);
          said = true;
        }
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  async append(entry: LedgerEntry): Promise<void> {
    await this.#publish(entry);
    await this.#file.append(entry);
  }

  close(): void {
    this.#file.close();
  }
}
