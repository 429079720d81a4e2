/**
 * The accountant calls the trainer makes, over `src/privacy`: epsilon of T identical steps and
 * the noise calibrated to a target.
 */
import type { Mechanism } from "../src/dpzo/mechanism.ts";

export interface AccountingQuery {
  q: number;
  delta: number;
  mechanism: Mechanism;
  accountant: "pld" | "prv" | "rdp";
  steps: number;
}

export function epsilonOf(_query: AccountingQuery & { noise: number }): { epsilon: number; error: number } {
  throw new Error("privacy accountant not wired yet");
}

export function calibrateNoise(_query: AccountingQuery & { epsilon: number }): number {
  throw new Error("privacy accountant not wired yet");
}
