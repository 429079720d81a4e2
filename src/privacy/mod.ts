/**
 * Privacy accounting for DP-ZO: RDP (Mironov, Talwar and Zhang 2019), a tight PLD accountant
 * with pessimistic discretisation and a reported discretisation error (Koskela et al. 2020,
 * Gopi et al. 2021, Doroshenko et al. 2022), pure DP for the Laplace variant, calibration of
 * the noise, and the ledger interface the trainer uses.
 */
export type {
  Direction,
  LedgerStepPrivacy,
  LossTails,
  Mechanism,
  PrivacyLoss,
} from "./mechanisms.ts";
export {
  gaussianAdd,
  gaussianRemove,
  laplaceAdd,
  laplaceRemove,
  stepLosses,
  stepNoise,
} from "./mechanisms.ts";
export type { ComposedLoss, PldOptions, StepGroup, TightEpsilon } from "./pld.ts";
export {
  composedDelta,
  composedEpsilon,
  composeDirection,
  groupSteps,
  mergeGroups,
  pldDelta,
  pldEpsilon,
} from "./pld.ts";
export {
  DEFAULT_RDP_ORDERS,
  gaussianRdp,
  ledgerRdp,
  rdpEpsilon,
  rdpToEpsilon,
  stepRdp,
} from "./rdp.ts";
export { laplacePureEpsilon, laplaceScaleForEpsilon, laplaceStepEpsilon } from "./laplace.ts";
export type { Calibration, CalibrationQuery } from "./calibrate.ts";
export { calibrateNoise } from "./calibrate.ts";
export { discreteStepLosses, GRID_NOISE_UNITS, gridUnits } from "./discrete.ts";
export type { Accountant, AccountantName, EpsilonReport, PrivacyTarget } from "./accountant.ts";
export { ACCOUNTANT_NAMES, canTakeStep, ledgerEpsilon, makeAccountant } from "./accountant.ts";
export { erf, erfc, erfcx, gaussianHockeyStick, logErfc, normalCdf, normalSf } from "./special.ts";
