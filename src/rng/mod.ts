/**
 * Seeded randomness of a DP-ZO step: the Philox4x32-10 block function and the perturbation
 * direction `z(seed, name, index)` (specified in `z.ts`). Public and reproducible by design;
 * never use it for DP noise or batch sampling (those need a CSPRNG).
 */
export {
  mulhi32,
  mulhiM0,
  mulhiM1,
  philox4x32_10,
  PHILOX_M0,
  PHILOX_M1,
  PHILOX_W0,
  PHILOX_W1,
  philoxRoundKeys,
} from "./philox.ts";
export { boxMullerPair, fillZ, fillZKeyed, nameHash, radius, seedKey, zAt } from "./z.ts";
export { createZKernel, type ZKernel } from "./wasm/mod.ts";
