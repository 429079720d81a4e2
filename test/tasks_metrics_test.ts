/**
 * SQuAD v1.1 F1 / exact match, written from the rules of the official `evaluate-v1.1.py`:
 * lower case, punctuation removed (not replaced by a space), articles a/an/the removed as whole
 * words, whitespace collapsed; F1 over token bags; the best score over the gold answers.
 */
import { strict as assert } from "node:assert";
import {
  exactMatch,
  f1Score,
  maxOverAnswers,
  normalizeAnswer,
  scoreAnswers,
} from "../src/eval/squad_metrics.ts";
import { predictionText } from "../src/eval/generation.ts";

const close = (a: number, b: number) => assert.ok(Math.abs(a - b) < 1e-12, `${a} vs ${b}`);

Deno.test("normalisation: case, punctuation, articles, whitespace", () => {
  assert.equal(normalizeAnswer("The  Cat, sat!"), "cat sat");
  assert.equal(normalizeAnswer("  A\tan\nTHE apple "), "apple");
  // Articles only as whole words; punctuation is deleted, not turned into a space.
  assert.equal(normalizeAnswer("theatre anthem a-team"), "theatre anthem ateam");
  assert.equal(normalizeAnswer("don't"), "dont");
  assert.equal(normalizeAnswer("U.S."), "us");
  assert.equal(normalizeAnswer("the."), "");
  // Every character of Python's string.punctuation goes.
  assert.equal(normalizeAnswer("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~x"), "x");
  // Non-ASCII letters are word characters: "thé" is not an article, and "é" stays.
  assert.equal(normalizeAnswer("the théâtre"), "théâtre");
});

Deno.test("exact match compares normalised strings", () => {
  assert.equal(exactMatch("The Eiffel Tower.", "eiffel tower"), 1);
  assert.equal(exactMatch("Eiffel Tower in Paris", "Eiffel Tower"), 0);
  assert.equal(exactMatch("", "a"), 1); // both normalise to ""
});

Deno.test("F1 over token bags with multiplicity", () => {
  // pred: [denver, broncos], gold: [broncos] -> p 1/2, r 1 -> 2/3
  close(f1Score("Denver Broncos", "The Broncos"), 2 / 3);
  close(f1Score("the the cat cat", "cat"), 2 * (0.5 * 1) / 1.5); // 'the' removed: [cat, cat]
  close(f1Score("cat cat dog", "cat dog dog"), 2 / 3); // common: cat x1, dog x1
  assert.equal(f1Score("Paris", "London"), 0);
  // v1.1: no common token gives 0, also when both sides are empty after normalisation.
  assert.equal(f1Score("the", "a"), 0);
  assert.equal(f1Score("", "answer"), 0);
});

Deno.test("the best over several gold answers, then the mean over questions", () => {
  const golds = ["Denver Broncos", "The Broncos", "Broncos"];
  assert.equal(maxOverAnswers(exactMatch, "broncos!", golds), 1);
  close(maxOverAnswers(f1Score, "the Denver team", golds), 2 * (1 / 2) * (1 / 2) / 1);
  const s = scoreAnswers(["broncos", "Carolina", "x"], [golds, ["Carolina Panthers"], ["y"]]);
  close(s.em, 1 / 3);
  close(s.f1, (1 + 2 / 3 + 0) / 3);
  assert.throws(() => maxOverAnswers(f1Score, "x", []), /at least one gold answer/);
});

Deno.test("a generated answer is cut at the first newline and trimmed", () => {
  const tok = { decode: (ids: number[]) => ids.map((i) => ["  Paris", "\n", "Q"][i]).join("") };
  // deno-lint-ignore no-explicit-any
  assert.equal(predictionText(tok as any, [0, 1, 2]), "Paris");
});
