/**
 * Sharded training over a real nats-server: the same run (insecure_seed) embedded, over NATS
 * with K = 2 stages, and with K = 2 x R = 2 replica groups ends with the same
 * final_weights_sha256 and the same ledger apart from times. Activations are chunked (the
 * server runs with a small max_payload), micro-batches of 3 are several in flight down each
 * pipeline and spread over the replica groups: a micro-batch is the same rows whatever the
 * topology, so with the same micro_batch every run computes the same losses (with the native
 * matMul too, whose last bits depend on a row's place in the call). The shipped config as it
 * is (LoRA, the default micro-batch) ends with one hash on one thread or two, embedded, as K = 2
 * and as R = 2 with the launcher's shares of the cores (the thread counts change no bit).
 * Parameter sync per step and worker is the same for tiny-opt and small-opt, and at most 200
 * bytes.
 */
import { strict as assert } from "node:assert";
import { startNatsServer } from "../cluster/nats_server.ts";
import { DATA, dpzo, dpzoWith, FIXTURES, lacks, ledgerOf, missing, readJson } from "./fixtures.ts";

const common = [
  "--quiet",
  "--set",
  "train.steps=6",
  "--set",
  "task.val_examples=8",
  "--set",
  "task.test_examples=8",
  "--set",
  "insecure_seed=7",
  "--set",
  "cluster.micro_batch=3",
  "--set",
  "mode={type: full}",
];

Deno.test({
  name: "embedded, K=2 and K=2 x R=2 over NATS end bit-identical",
  ignore: lacks("nats-server") || missing(`${FIXTURES}/tiny-opt`) || missing(`${DATA}/sst2`),
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "dpzo-cluster-" });
    const server = await startNatsServer({ storeDir: `${dir}/nats`, maxPayload: 16 * 1024 });
    try {
      const cfg = ["--config", "configs/tiny-sst2.yaml", ...common];
      const embedded = await dpzo("train", ...cfg, "--set", `run_dir=${dir}/embedded`);
      assert.equal(embedded.code, 0, embedded.stderr);
      // K = 2 on the test's server (activations chunked under its 16 KiB max_payload).
      const k2 = await dpzo(
        "launch",
        ...cfg,
        "--stages",
        "2",
        "--nats",
        server.url,
        "--set",
        `run_dir=${dir}/k2`,
      );
      assert.equal(k2.code, 0, k2.stderr);
      assert.match(k2.stderr, /coord +\| coordinator: all 2 workers ready/);
      // K = 2 x R = 2 with the launcher's own nats-server.
      const k2r2 = await dpzo(
        "launch",
        ...cfg,
        "--stages",
        "2",
        "--replicas",
        "2",
        "--set",
        `run_dir=${dir}/k2r2`,
      );
      assert.equal(k2r2.code, 0, k2r2.stderr);

      const e = readJson(`${dir}/embedded/summary.json`);
      const a = readJson(`${dir}/k2/summary.json`);
      const b = readJson(`${dir}/k2r2/summary.json`);
      assert.equal(a.final_weights_sha256, e.final_weights_sha256);
      assert.equal(b.final_weights_sha256, e.final_weights_sha256);
      assert.match(k2.stdout, new RegExp(`final_weights_sha256: ${e.final_weights_sha256}`));
      const le = await ledgerOf(`${dir}/embedded`);
      assert.equal(le.length, 6);
      assert.deepEqual(await ledgerOf(`${dir}/k2`), le);
      assert.deepEqual(await ledgerOf(`${dir}/k2r2`), le);
      assert.deepEqual(a.final, e.final);
      assert.deepEqual(b.final, e.final);

      assert.ok(
        a.param_sync_bytes_per_step_per_worker <= 200,
        `${a.param_sync_bytes_per_step_per_worker}`,
      );
      assert.ok(a.activation_bytes_per_step > 0);
      assert.equal(a.cluster.stages, 2);
      assert.equal(b.cluster.replicas, 2);
      assert.equal(b.cluster.workers.length, 4);
      for (const w of b.cluster.workers) {
        assert.equal(w.control_bytes / 6, b.param_sync_bytes_per_step_per_worker);
      }
      // The launcher's nats-server kept its store in the run directory and is gone.
      assert.ok(Deno.statSync(`${dir}/k2r2/nats`).isDirectory);
    } finally {
      await server.stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "the shipped config ends with one hash on 1 or 2 threads, embedded, K=2 and R=2",
  ignore: lacks("nats-server") || missing(`${FIXTURES}/tiny-opt`) || missing(`${DATA}/sst2`),
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "dpzo-threads-" });
    try {
      const cfg = [
        "--config",
        "configs/tiny-sst2.yaml",
        "--quiet",
        "--set",
        "train.steps=6",
        "--set",
        "task.val_examples=8",
        "--set",
        "task.test_examples=8",
        "--set",
        "insecure_seed=7",
      ];
      const runs: [string, Record<string, string>, string[]][] = [
        ["embedded", {}, ["train"]],
        // OpenBLAS' own thread setting is overridden: every call runs on one thread.
        ["one-thread", { DPZO_THREADS: "1", OPENBLAS_NUM_THREADS: "2" }, ["train"]],
        ["k2", {}, ["launch", "--stages", "2"]],
        ["r2", {}, ["launch", "--replicas", "2"]],
      ];
      const hashes: Record<string, string> = {};
      for (const [name, env, command] of runs) {
        const r = await dpzoWith(env, ...command, ...cfg, "--set", `run_dir=${dir}/${name}`);
        assert.equal(r.code, 0, `${name}: ${r.stderr}`);
        hashes[name] = readJson(`${dir}/${name}/summary.json`).final_weights_sha256;
        if (name === "one-thread") assert.match(r.stderr + r.stdout, /one thread per call/);
      }
      assert.deepEqual(
        new Set(Object.values(hashes)).size,
        1,
        `final_weights_sha256 differ: ${JSON.stringify(hashes)}`,
      );
      const ledger = await ledgerOf(`${dir}/embedded`);
      for (const name of ["one-thread", "k2", "r2"]) {
        assert.deepEqual(await ledgerOf(`${dir}/${name}`), ledger, name);
      }
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "parameter sync per step and worker is the same for tiny-opt and small-opt",
  ignore: lacks("nats-server") || missing(`${FIXTURES}/small-opt`) || missing(`${DATA}/sst2`),
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "dpzo-cluster-" });
    try {
      const bytes: number[] = [];
      for (const model of ["tiny-opt", "small-opt"]) {
        const r = await dpzo(
          "launch",
          "--config",
          "configs/tiny-sst2.yaml",
          "--stages",
          "2",
          "--run",
          "sync",
          "--quiet",
          "--set",
          `model=${FIXTURES}/${model}`,
          "--set",
          `run_dir=${dir}/${model}`,
          "--set",
          "train.steps=3",
          "--set",
          "task.val_examples=2",
          "--set",
          "task.test_examples=2",
          "--set",
          "insecure_seed=3",
          "--set",
          "train.batch_size=4",
        );
        assert.equal(r.code, 0, r.stderr);
        bytes.push(readJson(`${dir}/${model}/summary.json`).param_sync_bytes_per_step_per_worker);
      }
      assert.equal(bytes[0], bytes[1]);
      assert.ok(bytes[0] <= 200, `${bytes[0]} bytes`);
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
