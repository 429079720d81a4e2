/**
 * A config that does not validate gets one line: the field, where its value came from (the file
 * or the `--set`), what is expected with an example, and for a typo the field it meant.
 */
import { strict as assert } from "node:assert";
import { loadRunConfig, parseRunConfig, RunConfigSchema } from "../src/dpzo/config.ts";
import { closest, knownFields } from "../src/dpzo/config_errors.ts";

const good = {
  run_dir: "r",
  model: "m",
  task: { name: "sst2", data: "d" },
  train: { steps: 10, lr: 1e-3 },
  privacy: { target_epsilon: 1 },
};

function message(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    const m = (e as Error).message;
    assert.ok(!m.includes("\n"), `one line: ${m}`);
    return m;
  }
  throw new Error("no error");
}

Deno.test("an unknown key gets 'did you mean' from the known field names", () => {
  const { train, ...rest } = good;
  assert.equal(
    message(() => parseRunConfig({ ...rest, trian: train }, "c.yaml")),
    "c.yaml: trian: unknown field; did you mean train? (train is required, e.g. train: " +
      "{steps: 1000, lr: 1.0e-3})",
  );
  assert.equal(
    message(() => parseRunConfig({ ...good, privacy: { target_epsilon: 1, sgima: 1 } }, "c.yaml")),
    "c.yaml: privacy.sgima: unknown field; did you mean privacy.sigma?",
  );
  // LoRA's fields are known inside mode, whichever type it has.
  assert.match(
    message(() => parseRunConfig({ ...good, mode: { type: "lora", rnak: 4 } }, "c.yaml")),
    /mode\.rnak: unknown field; did you mean mode\.rank\?/,
  );
  // Nothing close: the fields that exist there.
  assert.match(
    message(() => parseRunConfig({ ...good, task: { ...good.task, xyzzy: 1 } }, "c.yaml")),
    /task\.xyzzy: unknown field; the fields here: name, data, train_examples, .*max_length/,
  );
  assert.equal(closest("stpes", knownFields(RunConfigSchema, ["train"])), "steps");
  assert.equal(closest("zzz", ["steps", "lr"]), undefined);
});

Deno.test("a wrong value says what is expected, what was given, and an example", () => {
  assert.equal(
    message(() => parseRunConfig({ ...good, train: { steps: "ten", lr: 1e-3 } }, "c.yaml")),
    'c.yaml: train.steps: expected a number, got "ten" (e.g. steps: 1000)',
  );
  assert.equal(
    message(() => parseRunConfig({ ...good, train: { steps: 10, lr: 0 } }, "c.yaml")),
    "c.yaml: train.lr: expected a value > 0, got 0 (e.g. lr: 1.0e-3)",
  );
  assert.equal(
    message(() => parseRunConfig({ ...good, task: { name: "sst3", data: "d" } }, "c.yaml")),
    'c.yaml: task.name: expected one of sst2, qnli, squad, drop, got "sst3"',
  );
  assert.equal(
    message(() => parseRunConfig({ ...good, train: { lr: 1e-3 } }, "c.yaml")),
    "c.yaml: train.steps: required (e.g. steps: 1000)",
  );
});

Deno.test("a problem a --set made is blamed on that --set, not on the file", async () => {
  const dir = await Deno.makeTempDir();
  const file = `${dir}/c.yaml`;
  await Deno.writeTextFile(file, JSON.stringify(good));
  try {
    await assert.rejects(
      loadRunConfig(file, ["train.stpes=100"]),
      (e: Error) => {
        assert.equal(
          e.message,
          "--set train.stpes=100: train.stpes: unknown field; did you mean train.steps?",
        );
        return true;
      },
    );
    await assert.rejects(
      loadRunConfig(file, ["train.steps=abc", "run_dir=x"]),
      (e: Error) => {
        assert.equal(
          e.message,
          '--set train.steps=abc: train.steps: expected a number, got "abc" (e.g. steps: 1000)',
        );
        return true;
      },
    );
    // The file's own problem stays the file's; the --set's is named beside it.
    await Deno.writeTextFile(file, JSON.stringify({ ...good, trian: 1 }));
    await assert.rejects(loadRunConfig(file, ["privacy.mechanism=gauss"]), (e: Error) => {
      assert.match(
        e.message,
        new RegExp(
          `^${file}: trian: unknown field; did you mean train\\?; --set privacy.mechanism=gauss: ` +
            `privacy.mechanism: expected one of gaussian, laplace, got "gauss"$`,
        ),
      );
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
