/**
 * The stage plan of a sharded run: K pipeline stages over contiguous decoder-layer ranges,
 * balanced by parameter count (the memory a stage needs). The embeddings live on the first
 * stage, the final norm and the LM head on the last; OPT's LM head is tied to `embed_tokens`,
 * so the last stage holds its own copy (it receives the same z: z depends on the name only).
 */
import { stageParameters, type StageRange } from "../src/model/opt.ts";
import type { OptConfig } from "../src/model/config.ts";

export interface StagePlan {
  stages: number;
  groups: number;
  ranges: StageRange[];
  /** Parameters held by each stage (the tied LM head counted on both ends). */
  parameters: number[];
}

function count(model: OptConfig, range: StageRange): number {
  return stageParameters(model, range).reduce((n, s) => n + s.shape.reduce((a, b) => a * b, 1), 0);
}

/**
 * Splits the model into `stages` contiguous ranges minimising the largest stage's parameter
 * count (exact dynamic programme over layer boundaries); every stage gets at least one layer.
 */
export function planStages(model: OptConfig, stages: number, groups = 1): StagePlan {
  const L = model.numLayers;
  if (!Number.isInteger(stages) || stages < 1) {
    throw new Error(`stages: expected a whole number >= 1`);
  }
  if (stages > L) {
    throw new Error(
      `stages: ${stages} stages for a model of ${L} decoder layers; use at most ${L}`,
    );
  }
  const layer = (l: number) =>
    count(model, { firstLayer: l, endLayer: l + 1, embeddings: false, head: false });
  const emb = count(model, { firstLayer: 0, endLayer: 0, embeddings: true, head: false });
  const head = count(model, { firstLayer: 0, endLayer: 0, embeddings: false, head: true });
  const w = Array.from(
    { length: L },
    (_, l) => layer(l) + (l === 0 ? emb : 0) + (l === L - 1 ? head : 0),
  );
  const prefix = [0];
  for (const x of w) prefix.push(prefix[prefix.length - 1] + x);
  // best[k][i]: smallest max-stage size splitting layers [0, i) into k stages; cut[k][i]: start.
  const best = Array.from({ length: stages + 1 }, () => new Array(L + 1).fill(Infinity));
  const cut = Array.from({ length: stages + 1 }, () => new Array(L + 1).fill(0));
  best[0][0] = 0;
  for (let k = 1; k <= stages; k++) {
    for (let i = k; i <= L; i++) {
      for (let j = k - 1; j < i; j++) {
        const v = Math.max(best[k - 1][j], prefix[i] - prefix[j]);
        if (v < best[k][i]) {
          best[k][i] = v;
          cut[k][i] = j;
        }
      }
    }
  }
  const bounds: number[] = [L];
  for (let k = stages, i = L; k > 0; k--) {
    i = cut[k][i];
    bounds.unshift(i);
  }
  const ranges = Array.from({ length: stages }, (_, k) => ({
    firstLayer: bounds[k],
    endLayer: bounds[k + 1],
    embeddings: k === 0,
    head: k === stages - 1,
  }));
  return { stages, groups, ranges, parameters: ranges.map((r) => count(model, r)) };
}
