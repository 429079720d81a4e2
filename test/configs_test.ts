/**
 * Every ready-made configuration in configs/ validates, so a user never meets a schema error in a
 * file we ship.
 */
import { strict as assert } from "node:assert";
import { loadRunConfig } from "../src/dpzo/config.ts";

const dir = new URL("../configs/", import.meta.url).pathname;

for (
  const e of [...Deno.readDirSync(dir)].filter((f) => f.name.endsWith(".yaml")).sort((a, b) =>
    a.name < b.name ? -1 : 1
  )
) {
  Deno.test(`configs/${e.name} validates`, async () => {
    const c = await loadRunConfig(`${dir}${e.name}`);
    assert.ok(c.train.steps > 0);
    assert.ok(c.run_dir.length > 0);
  });
}

Deno.test("a run config with backend: tensorflow is refused for training, with the reason", async () => {
  await assert.rejects(
    loadRunConfig(`${dir}tiny-sst2.yaml`, ["backend=tensorflow"]),
    /backend: tensorflow cannot train: .*cannot be perturbed in place; use backend: wasm/,
  );
});
