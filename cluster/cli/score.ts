/**
 * `dpzo score --model DIR|ID --input FILE.jsonl [--json] [--batch N]`: for each input line
 * `{"text": "..."}` prints its token count, or with `--json` one line
 * `{"ids": [...], "loss": <mean next-token CE in nats>, "next_token": <argmax id>}`.
 */
import { Command } from "@commander-js/extra-typings";
import { z } from "zod";
import { openCheckpoint } from "../../src/model/checkpoint.ts";
import { wholeModel } from "../../src/model/opt.ts";
import { loadStage } from "../../src/model/load.ts";
import { loadTokenizer } from "../../src/tokenizer/mod.ts";
import { scoreSequences } from "../../src/eval/score.ts";
import { formatZodError, UsageError } from "../../src/validation.ts";
import { resolveModelDir } from "../../src/hub/mod.ts";
import { backendOption, dtypeOption, flag, positiveInt, startBackend } from "./common.ts";

const InputLine = z.object({ text: z.string({ error: "expected a string" }) });

/** Reads a JSONL file of `{"text": ...}` lines; errors name the file and line. */
export async function readTextsJsonl(path: string): Promise<string[]> {
  let content: string;
  try {
    content = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UsageError(`--input: ${path} not found`);
    throw e;
  }
  const texts: string[] = [];
  content.split("\n").forEach((line, i) => {
    if (line.trim() === "") return;
    let raw: unknown;
    try {
      raw = JSON.parse(line);
    } catch {
      throw new UsageError(`${path}:${i + 1}: not valid JSON; each line must be {"text": "..."}`);
    }
    const r = InputLine.safeParse(raw);
    if (!r.success) throw new UsageError(`${path}:${i + 1}: ${formatZodError(r.error)}`);
    texts.push(r.data.text);
  });
  return texts;
}

export function scoreCommand() {
  return new Command("score")
    .description("score texts with a model: token counts, or per-text loss and next token")
    .requiredOption(
      "--model <dir|id>",
      "OPT checkpoint directory, or Hub id[@revision] (e.g. facebook/opt-125m), fetched once",
    )
    .requiredOption("--input <file.jsonl>", 'one {"text": "..."} per line')
    .option("--json", "print one JSON line per text with ids, loss and next_token")
    .option("--batch <n>", "texts per forward pass", "8")
    .addOption(backendOption())
    .addOption(dtypeOption())
    .action(async (opts) => {
      const batch = flag("--batch", positiveInt, opts.batch);
      await startBackend(opts.backend);
      const texts = await readTextsJsonl(opts.input);
      const model = await resolveModelDir(opts.model);
      const tokenizer = await loadTokenizer(model);
      const ckpt = await openCheckpoint(model);
      const stage = await loadStage(ckpt, wholeModel(ckpt.config), opts.dtype);
      const scores = scoreSequences(stage, texts.map((t) => tokenizer.encode(t)), batch);
      for (const s of scores) {
        if (opts.json) {
          console.log(JSON.stringify({ ids: s.ids, loss: s.loss, next_token: s.nextToken }));
        } else {
          console.log(`${s.ids.length} token${s.ids.length === 1 ? "" : "s"}`);
        }
      }
    });
}
