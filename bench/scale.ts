/**
 * Cost as the model grows: `dpzo bench` on checkpoints of real OPT shapes (random weights, from
 * `python3 ../shared/tools/make_big_opt.py SIZE DIR`), each in its own process, at two batch
 * shapes and the storage precisions asked for, printed as the README's "Scale" table:
 *
 * - forward GFLOP/s against the OpenBLAS sgemm peak measured in the same process (a [2048,
 *   2048] x [2048, 1024] product through the same blocks and threads as the forward);
 * - perturbation pass in parameters per second;
 * - peak RSS above the runtime, against the stored weight bytes (and against them plus the
 *   live activations of a forward).
 *
 *   deno run -A bench/scale.ts --models DIR1,DIR2,... [--shapes 16x64,2x32]
 *     [--dtypes float32,bfloat16] [--steps 1] [--json]
 */
import { parseArgs } from "node:util";
import { dpzoUnlimited as dpzo } from "../test/fixtures.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    models: { type: "string" },
    shapes: { type: "string", default: "16x64,2x32" },
    dtypes: { type: "string", default: "float32" },
    steps: { type: "string", default: "1" },
    json: { type: "boolean", default: false },
  },
});
if (!values.models) {
  console.error(
    "usage: deno run -A bench/scale.ts --models DIR[,DIR...] (checkpoints from " +
      "python3 ../shared/tools/make_big_opt.py SIZE DIR)",
  );
  Deno.exit(2);
}

const rows: Record<string, unknown>[] = [];
const gib = (b: number) => (b / 2 ** 30).toFixed(2);
const header = [
  "model",
  "params",
  "dtype",
  "batch",
  "forward s",
  "GFLOP/s",
  "of sgemm peak",
  "perturbation params/s",
  "step s",
  "weights GiB",
  "RSS above runtime GiB",
  "x stored weights",
  "x (weights + activations)",
];
console.log(`| ${header.join(" | ")} |\n|${header.map(() => " --- ").join("|")}|`);
for (const model of values.models.split(",")) {
  for (const dtype of values.dtypes!.split(",")) {
    for (const shape of values.shapes!.split(",")) {
      const [batch, seqLen] = shape.split("x");
      console.error(`${model} ${dtype} ${shape} ...`);
      const r = await dpzo(
        "bench",
        "--model",
        model,
        "--batch",
        batch,
        "--seq-len",
        seqLen,
        "--steps",
        values.steps!,
        "--dtype",
        dtype,
        "--json",
      );
      if (r.code !== 0) {
        console.log(
          `| ${model} | ${dtype} | ${shape} | failed: ${r.stderr.trim().split("\n").pop()} |`,
        );
        continue;
      }
      const j = JSON.parse(r.stdout.trim().split("\n").pop()!);
      rows.push(j);
      const above = j.peak_rss_bytes - j.rss_before_load_bytes;
      console.log(
        `| ${model.split("/").pop()} | ${(j.params / 1e9).toFixed(2)}B | ${dtype} | ${shape} | ` +
          `${j.forward_s.toFixed(2)} | ${j.forward_gflops.toFixed(0)} | ` +
          `${
            j.sgemm_peak_gflops ? (100 * j.forward_gflops / j.sgemm_peak_gflops).toFixed(0) : "-"
          }% ` +
          `of ${j.sgemm_peak_gflops?.toFixed(0) ?? "-"} | ` +
          `${(j.perturb_params_per_s / 1e6).toFixed(0)}M | ${j.step_s.toFixed(1)} | ` +
          `${gib(j.stored_weight_bytes)} | ${gib(above)} | ` +
          `${(above / j.stored_weight_bytes).toFixed(3)} | ` +
          `${(above / (j.stored_weight_bytes + j.activation_peak_bytes)).toFixed(3)} |`,
      );
    }
  }
}
if (values.json) console.log(JSON.stringify(rows));
