/**
 * `dpzo plan` and the memory arithmetic behind it (src/model/memory.ts, cluster/plan.ts): the
 * split covers every layer, the figures add up and fit the node, the activation formula is the
 * one `dpzo bench` measures, a model that fits nowhere is refused with the fix, the shipped big
 * configs carry the plan's output, and `dpzo launch` refuses a split this machine cannot hold
 * before starting anything.
 */
import { strict as assert } from "node:assert";
import { z } from "zod";
import { FIXTURES, lacks, missing, SHARED } from "./fixtures.ts";
import { loadOptConfig, type OptConfig } from "../src/model/config.ts";
import { wholeModel } from "../src/model/opt.ts";
import { activationTensorBytes, HALF_COMMIT_BYTES } from "../src/model/memory.ts";
import { loadRunConfig } from "../src/dpzo/config.ts";
import {
  formatPlan,
  GiB,
  HEADROOM,
  localFitProblem,
  localNeedBytes,
  modelParameters,
  planRequest,
  planRun,
  type RunPlan,
} from "../cluster/plan.ts";
import { defaultRunId } from "../cluster/launcher.ts";
import type { ForwardRequest } from "../cluster/protocol.ts";
import { livePeakBytes } from "../cluster/bench.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const MAIN = `${ROOT}cluster/main.ts`;
const TINY = `${FIXTURES}/tiny-opt`;
const SMALL = `${FIXTURES}/small-opt`;
const noFixtures = missing(TINY) || missing(SMALL);
const noPython = lacks("python3") || missing(`${SHARED}/tools/make_big_opt.py`);

/** A config.json of a real OPT size (make_big_opt.py --config-only) in a fresh temp dir. */
async function bigConfigDir(size: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: `dpzo-plan-${size}-` });
  const out = await new Deno.Command("python3", {
    args: [`${SHARED}/tools/make_big_opt.py`, size, dir, "--config-only"],
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return dir;
}

async function dpzo(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
}

/** Checks what every plan must satisfy. */
function assertConsistent(model: OptConfig, p: RunPlan): void {
  const s = p.stage_plan;
  assert.equal(s.length, p.stages);
  assert.equal(s[0].first_layer, 0);
  assert.equal(s[s.length - 1].end_layer, model.numLayers);
  s.forEach((st, k) => {
    assert.ok(st.end_layer > st.first_layer, `stage ${k} holds a layer`);
    if (k > 0) assert.equal(st.first_layer, s[k - 1].end_layer, "contiguous, no layer twice");
    assert.equal(st.embeddings, k === 0);
    assert.equal(st.head, k === s.length - 1);
    const m = st.memory;
    assert.equal(
      m.total_bytes,
      m.weights_bytes + m.lora_bytes + m.scratch_bytes + m.activations_bytes +
        m.messages_bytes + m.runtime_bytes,
    );
    const bytes = p.dtype === "float32" ? 4 : 2;
    assert.equal(m.weights_bytes, st.parameters * bytes);
    assert.ok(m.total_bytes <= p.worker_memory_limit_bytes, `stage ${k} fits`);
  });
  // The tied embedding is held twice once the head is on another stage.
  const tied = p.stages > 1 ? model.vocabSize * model.embedDim : 0;
  assert.equal(s.reduce((n, st) => n + st.parameters, 0), p.parameters + tied);
  assert.equal(p.largest_worker_bytes, Math.max(...s.map((st) => st.memory.total_bytes)));
  assert.equal(
    p.all_workers_bytes,
    p.replicas * s.reduce((n, st) => n + st.memory.total_bytes, 0),
  );
  assert.ok(p.workers <= p.nodes);
  assert.equal(p.worker_memory_limit_bytes, p.node_memory_bytes * (1 - HEADROOM));
  const wire = p.activation_dtype === "float32" ? 4 : 2;
  assert.equal(
    p.activation_bytes_per_step,
    2 * p.batch_size * p.seq_len * model.hiddenSize * wire * (p.stages - 1),
  );
  assert.ok(p.param_sync_bytes_per_step_per_worker > 0);
  assert.ok(p.param_sync_bytes_per_step_per_worker < 200, "the seed and scalars only");
}

Deno.test({
  name: "memory: the activation formula is the forward's peak of live tensors, LoRA too",
  ignore: noFixtures,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const { initBackend } = await import("../src/tensor/backend.ts");
    const { openCheckpoint } = await import("../src/model/checkpoint.ts");
    const { loadStage } = await import("../src/model/load.ts");
    const { attachLora } = await import("../src/dpzo/lora.ts");
    const { createStageWorker, forwardStage } = await import("../cluster/worker.ts");
    await initBackend("wasm");
    for (const dir of [TINY, SMALL]) {
      const model = await loadOptConfig(dir);
      for (const rank of [undefined, 8]) {
        const stage = await loadStage(await openCheckpoint(dir), wholeModel(model));
        const trainable = rank === undefined
          ? stage.specs.map((s) => s.name)
          : attachLora(stage, { rank, alpha: 16, initSeed: 0 }).map((s) => s.name);
        const worker = createStageWorker(stage, trainable);
        for (const [B, S] of [[2, 32], [16, 64]]) {
          // As dpzo bench scores: every position but the last of each row.
          const pairPos = Int32Array.from(
            { length: B * (S - 1) },
            (_, i) => Math.floor(i / (S - 1)) * S + (i % (S - 1)),
          );
          const req: ForwardRequest = {
            step: 0,
            micro: 0,
            sign: 0,
            batchSize: B,
            seqLen: S,
            ids: Int32Array.from({ length: B * S }, (_, i) => 4 + (i * 7919) % 50000),
            mask: new Int32Array(B * S).fill(1),
            pairPos,
            pairTok: new Int32Array(pairPos.length).fill(5),
            pairScore: Int32Array.from(pairPos, (p) => Math.floor(p / S)),
            numScores: B,
          };
          forwardStage(worker, req); // warm: kept masks and rows of ones
          const measured = livePeakBytes(() => forwardStage(worker, req));
          const est = activationTensorBytes(model, wholeModel(model), {
            tokens: B * S,
            headPositions: pairPos.length,
            loraRank: rank,
          });
          // Equal but for the one bias vector ([F, 1] at most) copied onto the heap at a time.
          const slack = model.ffnDim * 4;
          assert.ok(
            measured <= est + slack && est <= 1.05 * measured,
            `${dir} rank ${rank}, ${B} x ${S}: estimated ${est} B, measured ${measured} B`,
          );
        }
      }
    }
  },
});

Deno.test({
  name: "plan: tiny-opt and small-opt: every layer once, the parts add up, each worker fits",
  ignore: noFixtures,
  fn: async () => {
    for (const dir of [TINY, SMALL]) {
      const model = await loadOptConfig(dir);
      const one = planRun(planRequest(model, dir, { nodes: 1, nodeBytes: GiB }));
      assert.equal(one.stages, 1);
      assert.equal(one.activation_bytes_per_step, 0, "one stage: nothing between stages");
      assertConsistent(model, one);
      // Forced: every layer its own stage, two groups, LoRA, bfloat16, float16 on the wire.
      const many = planRun(planRequest(model, dir, {
        nodes: 2 * model.numLayers,
        nodeBytes: GiB,
        stages: model.numLayers,
        dtype: "bfloat16",
        mode: "lora",
        loraRank: 4,
        activationDtype: "float16",
      }));
      assert.equal(many.replicas, 2);
      assertConsistent(model, many);
      const last = many.stage_plan[many.stages - 1];
      assert.equal(
        last.memory.scratch_bytes,
        model.vocabSize * model.embedDim * 4 + HALF_COMMIT_BYTES,
      );
      assert.equal(last.memory.lora_bytes, 4 * 4 * model.hiddenSize * 4, "A and B on q and v");
      assert.equal(last.trainable_parameters, 4 * 4 * model.hiddenSize);
      assert.equal(formatPlan(one).length, 9, "human output: header, table, figures");
    }
  },
});

Deno.test({
  name: "plan: OPT-66B on 8 nodes of 80 GiB is 4 stages x 2 replicas; half storage halves it",
  ignore: noPython,
  fn: async () => {
    const dir = await bigConfigDir("66b");
    try {
      const model = await loadOptConfig(dir);
      assert.ok(Math.abs(modelParameters(model) / 65.7e9 - 1) < 0.01);
      const p = planRun(planRequest(model, dir, { nodes: 8, nodeBytes: 80 * GiB }));
      assert.deepEqual([p.stages, p.replicas, p.workers], [4, 2, 8]);
      assertConsistent(model, p);
      assert.ok(p.largest_worker_bytes > 60 * GiB, "a quarter of 263 GB of float32 weights");
      const half = planRun(
        planRequest(model, dir, { nodes: 8, nodeBytes: 80 * GiB, dtype: "bfloat16" }),
      );
      assert.equal(half.stages, 2, "2-byte weights: half the stages");
      assertConsistent(model, half);
      const d = half.stage_plan[0].memory;
      const E = model.embedDim, F = model.ffnDim, D = model.hiddenSize;
      assert.equal(d.scratch_bytes, Math.max(model.vocabSize * E, F * D) * 4 + HALF_COMMIT_BYTES);
      // A forced split that does not fit names one that does.
      assert.throws(
        () => planRun(planRequest(model, dir, { nodes: 8, nodeBytes: 80 * GiB, stages: 2 })),
        /--stages 2: the largest worker needs .* GiB.*--stages 4 fits/,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

const MemorySchema = z.object({
  weights_bytes: z.number().int().nonnegative(),
  lora_bytes: z.number().int().nonnegative(),
  scratch_bytes: z.number().int().nonnegative(),
  activations_bytes: z.number().int().positive(),
  messages_bytes: z.number().int().nonnegative(),
  runtime_bytes: z.number().int().positive(),
  total_bytes: z.number().int().positive(),
}).strict();

const PlanSchema = z.object({
  model: z.string(),
  layers: z.number().int().positive(),
  hidden_size: z.number().int().positive(),
  ffn_dim: z.number().int().positive(),
  vocab_size: z.number().int().positive(),
  parameters: z.number().int().positive(),
  dtype: z.enum(["float32", "bfloat16", "float16"]),
  mode: z.enum(["full", "lora"]),
  lora_rank: z.number().int().positive().nullable(),
  nodes: z.number().int().positive(),
  node_memory_bytes: z.number().positive(),
  headroom_fraction: z.number().min(0).max(1),
  worker_memory_limit_bytes: z.number().positive(),
  stages: z.number().int().positive(),
  replicas: z.number().int().positive(),
  workers: z.number().int().positive(),
  batch_size: z.number().positive(),
  micro_batch: z.number().int().positive(),
  seq_len: z.number().int().positive(),
  micro_batches_per_group_per_pass: z.number().int().positive(),
  activation_dtype: z.enum(["float32", "float16"]),
  threads_per_worker: z.number().int().positive(),
  head_positions_per_example: z.number().int().positive(),
  stage_plan: z.array(
    z.object({
      stage: z.number().int().nonnegative(),
      first_layer: z.number().int().nonnegative(),
      end_layer: z.number().int().positive(),
      embeddings: z.boolean(),
      head: z.boolean(),
      parameters: z.number().int().positive(),
      trainable_parameters: z.number().int().positive(),
      memory: MemorySchema,
    }).strict(),
  ),
  largest_worker_bytes: z.number().int().positive(),
  all_workers_bytes: z.number().int().positive(),
  activation_bytes_per_step: z.number().int().nonnegative(),
  activation_bytes_per_micro_batch: z.number().int().positive(),
  param_sync_bytes_per_step_per_worker: z.number().int().positive(),
  step_time: z.object({
    step_s: z.number().positive(),
    forward_s: z.number().positive(),
    perturbation_s: z.number().positive(),
    stage_micro_batch_s: z.array(z.number().positive()),
    layer_s: z.number().positive(),
    head_s: z.number().positive(),
    measured: z.object({
      threads: z.number().int().positive(),
      matmul: z.string(),
      tokens: z.number().int().positive(),
      layer_products_s: z.number().positive(),
      sgemm_gflop_per_s: z.number().positive(),
      fc1_gflop_per_s: z.number().positive(),
      perturb_params_per_s: z.number().positive(),
      measure_s: z.number().positive(),
    }).strict(),
  }).strict().nullable(),
}).strict();

Deno.test({
  name: "dpzo plan --json: every figure under a key with its unit; the step time measured here",
  ignore: noFixtures,
  fn: async () => {
    const r = await dpzo(["plan", "--model", TINY, "--nodes", "2", "--memory-gb", "1", "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const p = PlanSchema.parse(JSON.parse(r.stdout));
    assert.deepEqual([p.stages, p.replicas], [1, 2]);
    const t = p.step_time!;
    assert.ok(Math.abs(t.step_s - (t.forward_s + t.perturbation_s)) < 1e-9);
    assert.ok(t.measured.tokens === 16 * 128, "the run config's default micro-batch");
  },
});

Deno.test({
  name: "dpzo plan: OPT-66B's JSON; one node of 1 GiB is refused with one line naming the fix",
  ignore: noPython,
  fn: async () => {
    const dir = await bigConfigDir("66b");
    try {
      const ok = await dpzo([
        "plan",
        "--model",
        dir,
        "--nodes",
        "8",
        "--memory-gb",
        "80",
        "--json",
        "--no-step-time",
      ]);
      assert.equal(ok.code, 0, ok.stderr);
      const p = PlanSchema.parse(JSON.parse(ok.stdout));
      assert.equal(p.step_time, null);
      assert.ok(p.largest_worker_bytes <= 80 * GiB);
      const no = await dpzo(["plan", "--model", dir, "--nodes", "1", "--memory-gb", "1"]);
      assert.equal(no.code, 2);
      assert.equal(no.stdout, "");
      const lines = no.stderr.trim().split("\n");
      assert.equal(lines.length, 1, no.stderr);
      assert.match(lines[0], /fits no split over 1 node of 1\.0 GiB: .* use --memory-gb \d+/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "configs: the 13B/30B/66B memory comments are dpzo plan's current output",
  ignore: noPython,
  fn: async () => {
    for (const size of ["13b", "30b", "66b"]) {
      const path = `${ROOT}configs/opt-${size}-sst2.yaml`;
      const text = await Deno.readTextFile(path);
      const command = text.match(
        /`dpzo plan --config (\S+) --nodes (\d+) --memory-gb (\d+) --no-step-time`/,
      );
      assert.ok(command, `${path}: names the dpzo plan command`);
      const printed = text.split("\n").filter((l) => l.startsWith("# | ")).map((l) => l.slice(4));
      const config = await loadRunConfig(path);
      const dir = await bigConfigDir(size);
      try {
        const model = await loadOptConfig(dir);
        const flags = { nodes: Number(command[2]), nodeBytes: Number(command[3]) * GiB };
        const req = planRequest(model, config.model, flags, config, defaultRunId(config));
        assert.deepEqual(printed, formatPlan(planRun(req)), `${path}: rerun the command`);
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    }
  },
});

Deno.test({
  name: "launch: a split this machine cannot hold is refused with GiB needed, available, a fit",
  ignore: noFixtures,
  fn: async () => {
    const config = await loadRunConfig(`${ROOT}configs/tiny-sst2.yaml`, [`model=${TINY}`]);
    const model = await loadOptConfig(TINY);
    const split = { stages: 2, replicas: 2 };
    assert.equal(localFitProblem(config, model, split, 64 * GiB), null);
    const need = (s: { stages: number; replicas: number }) => localNeedBytes(config, model, s);
    // Between one worker's need and four workers': a smaller split fits, and is named.
    const available = (need({ stages: 1, replicas: 1 }) + need(split)) / 2;
    const line = localFitProblem(config, model, split, available)!;
    assert.match(line, /^launch: 2 stages x 2 replicas need [\d.]+ GiB on this machine/);
    assert.match(line, /GiB are available; (--stages \d+ ?)?(--replicas \d+)? would fit/);
    const stages = Number(line.match(/--stages (\d+)/)?.[1] ?? 2);
    const replicas = Number(line.match(/--replicas (\d+)/)?.[1] ?? 2);
    assert.equal(localFitProblem(config, model, { stages, replicas }, available), null);
    assert.match(localFitProblem(config, model, split, 1)!, /no split fits this machine/);
  },
});

Deno.test({
  name: "dpzo launch refuses an OPT-66B split on this machine before starting anything",
  ignore: noPython,
  fn: async () => {
    const dir = await bigConfigDir("66b");
    try {
      const r = await dpzo([
        "launch",
        "--config",
        "configs/tiny-sst2.yaml",
        "--stages",
        "2",
        "--set",
        `model=${dir}`,
        "--set",
        `run_dir=${dir}/run`,
      ]);
      assert.equal(r.code, 2, r.stderr);
      const lines = r.stderr.trim().split("\n");
      assert.equal(lines.length, 1, r.stderr);
      assert.match(
        lines[0],
        /^dpzo: launch: 2 stages x 1 replica need \d+\.\d GiB on this machine/,
      );
      assert.match(lines[0], /GiB are available; no split fits this machine/);
      assert.throws(() => Deno.statSync(`${dir}/run`), "nothing was started or written");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
