/**
 * `dpzo privacy --sampling-rate Q --steps T --delta D (--sigma S | --b B | --epsilon E)
 *  [--mechanism gaussian|laplace] [--accountant pld|prv|rdp] [--grid-units N | --continuous]
 *  [--unit example|context] [--directions K] [--json]`
 *
 * With a noise level: the (epsilon, delta) guarantee of T Poisson-subsampled steps.
 * With --epsilon: the least noise (sigma, or Laplace scale b) that meets (epsilon, delta),
 * rounded up to 0.001. The accountant defaults to the tight PLD one (src/privacy/pld.ts);
 * `prv` is an alias of it (same privacy loss distribution, same engine).
 *
 * The noise is the discrete mechanism a run uses (src/privacy/discrete.ts), on the grid a run
 * with that noise uses (or `--grid-units`): the answer is what `dpzo train` states for the same
 * q, T, delta and noise. `--continuous` gives the continuous mechanism, the reference that the
 * discrete epsilon never goes below.
 *
 * `--directions K` (train.directions, DP-AggZO) leaves epsilon as it is: a step of K directions
 * is one Gaussian release of an L2-clipped K-vector of sensitivity C (src/report/
 * privacy_statement.ts); the sentence says so. Laplace with K > 1 is refused, as in a run.
 */
import { Command, Option } from "@commander-js/extra-typings";
import { z } from "zod";
import {
  ACCOUNTANT_NAMES,
  type AccountantName,
  calibrateNoise,
  gridUnits,
  type Mechanism,
} from "../../src/privacy/mod.ts";
import { UsageError } from "../../src/validation.ts";
import { guaranteeOf, privacyStatement } from "../../src/report/privacy_statement.ts";

const MECHANISMS = ["gaussian", "laplace"] as const;

const numberFlag = (flag: string, example: string) =>
  z.string({ error: `${flag} is required, e.g. ${flag} ${example}` })
    .trim()
    .refine((s) => s !== "" && Number.isFinite(Number(s)), {
      error: `${flag} must be a number, e.g. ${flag} ${example}`,
    })
    .transform(Number);

const optionalNumber = (flag: string, example: string) => numberFlag(flag, example).optional();

/** The flags as commander hands them over (strings), validated into a query. */
export const PrivacyFlags = z.object({
  samplingRate: numberFlag("--sampling-rate", "0.016").refine((q) => q > 0 && q <= 1, {
    error: "--sampling-rate must be in (0, 1]: the Poisson rate, batch size / dataset size",
  }),
  steps: numberFlag("--steps", "75000").refine((t) => Number.isInteger(t) && t >= 1, {
    error: "--steps must be a whole number >= 1, e.g. --steps 75000",
  }),
  delta: numberFlag("--delta", "1e-5").refine((d) => d >= 0 && d < 1, {
    error: "--delta must be in [0, 1), e.g. --delta 1e-5 (below 1/dataset size)",
  }),
  sigma: optionalNumber("--sigma", "4.8").refine((s) => s === undefined || s > 0, {
    error: "--sigma must be > 0 (the noise multiplier), e.g. --sigma 4.8",
  }),
  b: optionalNumber("--b", "100").refine((s) => s === undefined || s > 0, {
    error: "--b must be > 0 (the Laplace scale in units of C), e.g. --b 100",
  }),
  epsilon: optionalNumber("--epsilon", "4").refine((s) => s === undefined || s > 0, {
    error: "--epsilon must be > 0, e.g. --epsilon 4",
  }),
  mechanism: z.enum(MECHANISMS, {
    error: "--mechanism must be gaussian or laplace",
  }),
  accountant: z.enum(ACCOUNTANT_NAMES as [AccountantName, ...AccountantName[]], {
    error: "--accountant must be pld, prv or rdp",
  }),
  gridUnits: optionalNumber("--grid-units", "853").refine(
    (d) => d === undefined || (Number.isInteger(d) && d >= 1),
    { error: "--grid-units must be a whole number >= 1 (the clip C in grid units)" },
  ),
  continuous: z.boolean().optional(),
  unit: z.enum(["example", "context"], { error: "--unit must be example or context" }).optional(),
  directions: optionalNumber("--directions", "4").refine(
    (k) => k === undefined || (Number.isInteger(k) && k >= 1 && k <= 64),
    { error: "--directions must be a whole number from 1 to 64 (train.directions), e.g. 4" },
  ),
  json: z.boolean().optional(),
}).superRefine((o, ctx) => {
  if (o.mechanism === "laplace" && (o.directions ?? 1) > 1) {
    ctx.addIssue({
      code: "custom",
      message: "--directions above 1 needs --mechanism gaussian (Laplace would need an L1 clip)",
    });
  }
  if (o.continuous && o.gridUnits !== undefined) {
    ctx.addIssue({
      code: "custom",
      message: "--grid-units is the discrete mechanism's grid; drop it with --continuous",
    });
  }
  const noiseFlag = o.mechanism === "gaussian" ? "--sigma" : "--b";
  const wrongFlag = o.mechanism === "gaussian" ? "--b" : "--sigma";
  const wrong = o.mechanism === "gaussian" ? o.b : o.sigma;
  const noise = o.mechanism === "gaussian" ? o.sigma : o.b;
  if (wrong !== undefined) {
    ctx.addIssue({
      code: "custom",
      message: `${wrongFlag} does not apply to --mechanism ${o.mechanism}; use ${noiseFlag}`,
    });
  } else if ((noise === undefined) === (o.epsilon === undefined)) {
    ctx.addIssue({
      code: "custom",
      message: `give exactly one of ${noiseFlag} (to get epsilon) or --epsilon (to calibrate ${
        noiseFlag.slice(2)
      })`,
    });
  } else if (o.mechanism === "gaussian" && o.delta === 0) {
    ctx.addIssue({
      code: "custom",
      message: "--delta must be > 0 for the Gaussian mechanism (it has no pure-DP guarantee)",
    });
  }
});

export type PrivacyQuery = z.infer<typeof PrivacyFlags>;

/** Parses commander's options; a bad flag becomes a UsageError (one line, exit status 2). */
export function parsePrivacyFlags(raw: Record<string, unknown>): PrivacyQuery {
  const r = PrivacyFlags.safeParse(raw);
  if (!r.success) throw new UsageError(r.error.issues[0].message);
  return r.data;
}

/** Runs a query; returns the JSON object and the human sentence. */
export function runPrivacy(
  query: PrivacyQuery,
): { json: Record<string, unknown>; text: string } {
  const { samplingRate: q, steps, delta, mechanism, accountant } = query;
  const noiseName = mechanism === "gaussian" ? "sigma" : "b";
  const base = {
    delta,
    sampling_rate: q,
    steps,
    mechanism,
    ...((query.directions ?? 1) > 1 ? { directions: query.directions } : {}),
  };
  const requested = accountant === "prv" ? { accountant_requested: "prv" } : {};
  const discrete = !query.continuous;
  const unit = {
    ...(query.unit === "context" ? { unit: "context" as const } : {}),
    ...((query.directions ?? 1) > 1 ? { directions: query.directions } : {}),
  };
  const gridOf = (noise: number) =>
    discrete ? { gridUnits: query.gridUnits ?? gridUnits(noise) } : {};
  if (query.epsilon !== undefined) {
    const c = calibrateNoise({
      mechanism,
      q,
      steps,
      epsilon: query.epsilon,
      delta,
      accountant,
      discrete,
    });
    const params = {
      q,
      steps,
      delta,
      mechanism,
      noise: c.noise,
      accountant,
      ...gridOf(c.noise),
      ...unit,
    };
    const r = query.gridUnits === undefined
      ? { epsilon: c.epsilon, error: c.error, delta, accountant: c.accountant }
      : guaranteeOf(params); // another grid than the calibration's: its own epsilon
    const json = {
      [noiseName]: c.noise,
      epsilon: r.epsilon,
      epsilon_error: r.error,
      target_epsilon: query.epsilon,
      ...base,
      noise: discrete ? "discrete" : "continuous",
      ...(discrete ? { grid_units: params.gridUnits } : {}),
      accountant: r.accountant,
      ...requested,
    };
    const text =
      `${noiseName} = ${c.noise} (least on a 0.001 grid, rounded up) meets target epsilon ${query.epsilon}: ${
        privacyStatement(params, r)
      }`;
    return { json, text };
  }
  const noise = (mechanism === "gaussian" ? query.sigma : query.b) as number;
  const params = { q, steps, delta, mechanism, noise, accountant, ...gridOf(noise), ...unit };
  const r = guaranteeOf(params);
  const json: Record<string, unknown> = {
    epsilon: r.epsilon,
    epsilon_error: r.error,
    ...base,
    [noiseName]: noise,
    noise: discrete ? "discrete" : "continuous",
    ...(discrete ? { grid_units: params.gridUnits } : {}),
    ...(r.discrete
      ? { epsilon_discrete_exact: r.discrete.exact, epsilon_continuous: r.discrete.continuous }
      : {}),
    accountant: r.accountant,
    ...requested,
  };
  if (r.epsilonPure !== undefined) json.epsilon_pure = r.epsilonPure;
  const text = privacyStatement(params, r);
  return { json, text };
}

export function privacyCommand() {
  return new Command("privacy")
    .description(
      "privacy accounting: epsilon of T Poisson-subsampled steps, or the noise for a target",
    )
    .option("--sampling-rate <q>", "Poisson sampling rate q = expected batch / dataset size")
    .option("--steps <T>", "number of steps")
    .option("--delta <d>", "target delta (0 only with --mechanism laplace)")
    .option("--sigma <s>", "Gaussian noise multiplier (noise std = sigma * C)")
    .option("--b <b>", "Laplace scale in units of C (eps0 = 1/b)")
    .option("--epsilon <e>", "target epsilon: calibrate the noise instead")
    .addOption(
      new Option("--mechanism <name>", "noise mechanism").choices(MECHANISMS).default(
        "gaussian" as Mechanism,
      ),
    )
    .addOption(
      new Option("--accountant <name>", "pld (tight, default), prv (alias of pld), rdp")
        .choices(ACCOUNTANT_NAMES).default("pld" as AccountantName),
    )
    .option(
      "--grid-units <n>",
      "the discrete noise's grid: C in grid units (default: a run's, round(4096 / noise))",
    )
    .option("--continuous", "continuous noise (the reference the discrete epsilon stays above)")
    .addOption(
      new Option("--unit <unit>", "what one neighbour is: a training example, or a passage")
        .choices(["example", "context"] as const),
    )
    .option(
      "--directions <K>",
      "directions per step (train.directions): the same epsilon, one Gaussian release per step",
    )
    .option("--json", "print one JSON line")
    .action((opts) => {
      const query = parsePrivacyFlags(opts);
      const { json, text } = runPrivacy(query);
      console.log(query.json ? JSON.stringify(json) : text);
    });
}
