/** OPT tokenizer (GPT-2 byte-level BPE, HF-compatible): public entry point. */

export {
  createTokenizer,
  type DecodeOptions,
  type EncodeOptions,
  loadTokenizer,
  type Tokenizer,
  type TokenizerOptions,
} from "./tokenizer.ts";
export { readTokenizerFiles, type SpecialToken, type TokenizerFiles } from "./files.ts";
export { gpt2Split, PY_ISSPACE, PY_REGEX_WS } from "./pretokenize.ts";
export { fromByteLevel, toByteLevel } from "./byte_level.ts";
