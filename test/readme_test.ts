/**
 * The README as a new user follows it: every `sh` block, in order, pasted into bash on a clean
 * copy of the repository (the files git tracks or would track, as a clone of this working tree
 * gives them: no node_modules, no runs) with `../shared` beside it. Two concessions to the suite's
 * time, both said in the README: `DPZO_SET` shortens every run (steps and split sizes), and
 * `deno task test` runs one quick test rather than the whole suite inside itself.
 */
import { strict as assert } from "node:assert";
import { lacks, missing, readJson, ROOT, SHARED } from "./fixtures.ts";

const SHORT = "train.steps=10 task.train_examples=100 task.val_examples=8 task.test_examples=8";
const ONE_TEST = "a wrong value says what is expected";

/** The `sh` blocks of a Markdown text, in order. */
export function shellBlocks(markdown: string): string[] {
  return [...markdown.matchAll(/^```sh\n([\s\S]*?)^```$/gm)].map((m) => m[1]);
}

async function cleanCopy(to: string): Promise<void> {
  const ls = await new Deno.Command("git", {
    args: ["ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    cwd: ROOT,
    stdout: "piped",
  }).output();
  assert.equal(ls.code, 0, "git ls-files");
  for (const file of new TextDecoder().decode(ls.stdout).split("\0").filter((f) => f)) {
    try {
      await Deno.lstat(`${ROOT}${file}`);
    } catch {
      continue; // deleted in the working tree, not yet committed
    }
    await Deno.mkdir(`${to}/${file}`.replace(/\/[^/]*$/, ""), { recursive: true });
    await Deno.copyFile(`${ROOT}${file}`, `${to}/${file}`);
  }
}

Deno.test({
  name: "every sh block of the README runs in order on a clean copy with ../shared beside it",
  ignore: missing(SHARED) || lacks("nats-server") || lacks("chromium") || lacks("git"),
  sanitizeResources: false,
  fn: async () => {
    const blocks = shellBlocks(await Deno.readTextFile(`${ROOT}README.md`));
    assert.ok(blocks.length >= 5, `found ${blocks.length} sh blocks`);
    assert.match(blocks[0], /^deno task dpzo train --config configs\/tiny-sst2\.yaml/);
    const tmp = await Deno.makeTempDir({ prefix: "dpzo-readme-" });
    try {
      const clone = `${tmp}/dpzo`;
      await cleanCopy(clone);
      await Deno.symlink(await Deno.realPath(SHARED), `${tmp}/shared`);
      const outputs: string[] = [];
      for (const [i, block] of blocks.entries()) {
        const script = block.replace(
          /^deno task test\b(.*)$/gm,
          `deno task test --no-check --filter "${ONE_TEST}"$1`,
        );
        const t0 = performance.now();
        const child = new Deno.Command("bash", {
          args: ["-e", "-o", "pipefail", "-c", script],
          cwd: clone,
          env: { DPZO_SET: SHORT, NO_COLOR: "1" },
          stdout: "piped",
          stderr: "piped",
        }).spawn();
        const timer = setTimeout(() => child.kill("SIGKILL"), 240_000);
        const out = await child.output();
        clearTimeout(timer);
        const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
        console.log(`README sh block ${i + 1}: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
        assert.equal(
          out.code,
          0,
          `README sh block ${i + 1} failed:\n${block}\n${text.slice(-3000)}`,
        );
        outputs.push(text);
      }
      // What the blocks say they do.
      assert.match(outputs[0], /privacy: \([0-9.]+, 1e-5\)-DP/);
      assert.match(outputs[0], /final_weights_sha256: [0-9a-f]{64}/);
      assert.match(outputs[0], /DPZO_SET: train\.steps=10/);
      assert.match(outputs[0], /1 passed/);
      const sha = readJson(`${clone}/runs/tiny-sst2/summary.json`).final_weights_sha256;
      assert.match(outputs[1], new RegExp(`final_weights_sha256: ${sha} \\(equal to the run's`));
      await Deno.stat(`${clone}/runs/tiny-sst2/model/model.safetensors`);
      await Deno.stat(`${clone}/runs/tiny-sst2/model/adapter/adapter_config.json`);
      await Deno.stat(`${clone}/runs/tiny-sst2/report.png`);
      assert.equal(readJson(`${clone}/runs/tiny-sst2-sharded/summary.json`).cluster.stages, 2);
      assert.equal(readJson(`${clone}/runs/tiny-squad/summary.json`).steps, 10);
    } finally {
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
    }
  },
});
