/**
 * `final_weights_sha256`: one hash of a model's float32 weights that every process layout
 * agrees on.
 *
 * Definition: for each parameter in canonical order — the base model's parameters in Hugging
 * Face `named_parameters()` order (`stageParameters` of the whole model), then the LoRA
 * tensors (layer, q_proj then v_proj, A then B) — take the SHA-256 of its little-endian float32
 * bytes (row-major, Hugging Face shape); the result is the SHA-256 of the concatenation of those
 * 32-byte digests. The tied LM head is `embed_tokens` and counts once. Because it is built
 * from per-tensor digests, stages on different machines each hash their own slice.
 */
import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";

export function tensorDigest(data: Float32Array): string {
  const h = createHash("sha256");
  h.update(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  return h.digest("hex");
}

/** Combines per-tensor digests, given in canonical order. */
export function combineDigests(digests: string[]): string {
  const h = createHash("sha256");
  for (const d of digests) h.update(Buffer.from(d, "hex"));
  return h.digest("hex");
}

/** Canonical order for a map name -> digest, following `order`; every name must be present. */
export function weightsSha256(order: string[], digests: Map<string, string>): string {
  return combineDigests(order.map((name) => {
    const d = digests.get(name);
    if (!d) throw new Error(`weights hash: no digest for ${name}`);
    return d;
  }));
}
