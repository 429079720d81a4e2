/**
 * Partitions that heal, on K = 2 over a real nats-server, each worker behind its own link
 * (bench/link_proxy.ts), with `cluster.heartbeat_timeout_s: 2`:
 *
 * - after step 3 one worker's link forwards nothing for 6 s: the coordinator gives that
 *   worker up and aborts the step; when the link heals the worker hears it was given up, joins
 *   again, takes its slot back and replays the ledger (before, it stayed orphaned and the run
 *   waited forever);
 * - after step 6 its connections are closed: the worker reconnects at once, before the timeout,
 *   and joins again, and the coordinator interrupts the step in flight, whose messages to it
 *   were lost (before, the step waited for the 10-minute op timeout).
 *
 * The run ends with every step once and the weights and ledger of `dpzo train` in one process.
 */
import { strict as assert } from "node:assert";
import { proxiedRun } from "../bench/proxied_cluster.ts";
import type { LinkProxy } from "../bench/link_proxy.ts";
import {
  DATA,
  dpzo,
  FIXTURES,
  lacks,
  ledgerLines,
  ledgerOf,
  missing,
  readJson,
} from "./fixtures.ts";

const sets = [
  "train.steps=10",
  "train.eval_every=0",
  "task.val_examples=4",
  "task.test_examples=4",
  "insecure_seed=5",
  "cluster.micro_batch=8",
];

Deno.test({
  name: "a worker cut off past the heartbeat timeout, or whose connection dropped, joins again",
  ignore: lacks("nats-server") || missing(`${FIXTURES}/tiny-opt`) || missing(`${DATA}/sst2`),
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "dpzo-partition-" });
    try {
      const runDir = `${dir}/cut`;
      let watching = true, stalled = false, dropped = false;
      const watch = async (links: LinkProxy[]) => {
        while (watching && !dropped) {
          const n = await ledgerLines(runDir);
          if (n >= 3 && !stalled) {
            stalled = true;
            links[1].stall(6000);
          }
          if (n >= 6) {
            dropped = true;
            links[1].drop();
          }
          await new Promise((r) => setTimeout(r, 50));
        }
      };
      let watcher = Promise.resolve();
      const cut = await proxiedRun({
        run: "cut",
        runDir,
        sets: [...sets, "cluster.stages=2", "cluster.heartbeat_timeout_s=2"],
        workers: 2,
        shape: null,
        started: (links) => (watcher = watch(links)),
        timeoutS: 120,
      });
      watching = false;
      await watcher;
      const log = cut.log.join("\n");
      assert.equal(cut.code, 0, log);
      assert.ok(stalled && dropped, "the link was stalled, then dropped");
      assert.match(log, /lost: no heartbeat/, "the coordinator gave the worker up");
      // (Either wording: the coordinator says the worker is lost, or no longer lists it.)
      assert.match(
        log,
        /(gave this worker up|no longer holds a slot for this worker).*joining (it )?again/,
        "the worker joined again",
      );
      assert.match(log, /dropped and came back; joining again/, "it joined again on reconnect");
      assert.equal(cut.restarts, 0, "no worker process was started again");

      const one = await dpzo(
        "train",
        "--config",
        "configs/tiny-sst2.yaml",
        "--quiet",
        ...[...sets, `run_dir=${dir}/one`].flatMap((s) => ["--set", s]),
      );
      assert.equal(one.code, 0, one.stderr);
      assert.deepEqual((await ledgerOf(runDir)).map((e) => e.step), [
        1,
        2,
        3,
        4,
        5,
        6,
        7,
        8,
        9,
        10,
      ]);
      assert.deepEqual(await ledgerOf(runDir), await ledgerOf(`${dir}/one`));
      assert.equal(
        readJson(`${runDir}/summary.json`).final_weights_sha256,
        readJson(`${dir}/one/summary.json`).final_weights_sha256,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
