/**
 * The ledger: appended lines read back exactly; a corrupted line, a partial last line and a gap
 * in the steps are reported with the file and line; replay passes are +phi, -2 phi, update.
 */
import { strict as assert } from "node:assert";
import {
  type LedgerEntry,
  LedgerWriter,
  readLedger,
  stepPasses,
} from "../src/checkpoint/ledger.ts";

function entry(step: number): LedgerEntry {
  return {
    step,
    seed: "18446744073709551615",
    phi: 0.01,
    ghat: -0.123456789,
    lr: 1e-4,
    update_coeff: 0.01 + 1e-4 * 0.123456789,
    weight_decay: 0,
    q: 0.016,
    mechanism: "gaussian",
    sigma: 4.8,
    time: "2026-11-28T00:00:00.000Z",
  };
}

Deno.test("ledger lines round-trip, 64-bit seeds exactly", async () => {
  const dir = await Deno.makeTempDir();
  const w = await LedgerWriter.open(`${dir}/ledger.jsonl`);
  await w.append(entry(1));
  await w.append(entry(2));
  w.close();
  const back = await readLedger(`${dir}/ledger.jsonl`);
  assert.deepEqual(back, [entry(1), entry(2)]);
  assert.equal(BigInt(back[0].seed), 2n ** 64n - 1n);
  assert.deepEqual(stepPasses(back[0]).map((p) => p.coeff), [0.01, -0.02, back[0].update_coeff]);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a corrupted ledger line is reported with its file and line", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/ledger.jsonl`;
  const w = await LedgerWriter.open(path);
  for (let s = 1; s <= 3; s++) await w.append(entry(s));
  w.close();
  const lines = (await Deno.readTextFile(path)).split("\n");
  await Deno.writeTextFile(
    `${dir}/altered.jsonl`,
    [lines[0], lines[1].replace("-0.123456789", "-0.9"), lines[2], ""].join("\n"),
  );
  await assert.rejects(readLedger(`${dir}/altered.jsonl`), /altered\.jsonl:2: checksum mismatch/);
  await Deno.writeTextFile(`${dir}/partial.jsonl`, [lines[0], lines[1].slice(0, 40)].join("\n"));
  await assert.rejects(
    readLedger(`${dir}/partial.jsonl`),
    /partial\.jsonl:2: corrupt ledger line.*partial line/,
  );
  await Deno.writeTextFile(`${dir}/gap.jsonl`, [lines[0], lines[2], ""].join("\n"));
  await assert.rejects(
    readLedger(`${dir}/gap.jsonl`),
    /gap\.jsonl:2: step 3 where step 2 was expected/,
  );
  await Deno.remove(dir, { recursive: true });
});
