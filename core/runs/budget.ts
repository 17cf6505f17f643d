import { modelFamily, parseRunConfig, type RunConfig } from '../config.js';
import { estimate } from './estimate.js';

/**
 * The effective batch the paper's base learning rates were tuned at (the official ViT-B/L recipes: 4096 images a
 * step). Below it AdamW wants the rate scaled by the square root of the batch ratio, not linearly: at batch 32 the
 * linear rule leaves blr 2e-4 at lr 2.5e-5, which barely moves the weights in the hundreds of steps a CPU run makes
 * (docs/results.md#learning-rate-against-time measures it).
 */
export const PAPER_BATCH = 4096;
/** A new run's time budget in minutes, unless its schedule is given. */
export const DEFAULT_MINUTES = 30;
/** The share of a fitted schedule spent warming up (the official recipes: 40 of 800 epochs). */
const WARMUP_SHARE = 0.05;

/** What a new run is fitted to: minutes on this machine, and whether its input size and patch follow the images too. */
export interface Budget {
  minutes: number;
  input: boolean;
}

/**
 * A new run's config fitted to a time budget on this backend and folder (docs/method.md#time-budget), and why, in one
 * line: `sides` are the images' short sides (one per image).
 */
export function fitToBudget(config: RunConfig, sides: number[], backend: string, budget: Budget): { config: RunConfig; why: string } {
  const input = budget.input ? fitInput(config, sides) : undefined;
  const sized = input ? parseRunConfig({ ...config, model: { ...config.model, ...input.model } }) : config;
  const schedule = fitSchedule(sized, sides.length, backend, budget.minutes);
  return {
    config: parseRunConfig({ ...sized, optim: { ...sized.optim, ...schedule.optim } }),
    why: [input?.why, schedule.why].filter(Boolean).join('; '),
  };
}

/**
 * A ViT's input no larger than its images (rounded up to a multiple of 8), with the patch that keeps its token grid:
 * upsampling 28 px images to 64 px costs 5× the compute and adds nothing.
 */
function fitInput(config: RunConfig, sides: number[]) {
  const { imgSize, patchSize } = config.model;
  const median = [...sides].sort((a, b) => a - b)[Math.floor(sides.length / 2)];
  const grid = imgSize / patchSize;
  const side = median === undefined ? imgSize : Math.ceil(median / grid) * grid;
  if (modelFamily(config.model) === 'swin' || side >= imgSize) return undefined;
  const model = { imgSize: side, patchSize: side / grid };
  return { model, why: `input ${side} px, patch ${model.patchSize} (the images' median side is ${median} px)` };
}

function fitSchedule(config: RunConfig, images: number, backend: string, minutes: number) {
  const { epochs, blr, batch, accumIter, warmupEpochs } = config.optim;
  const { secondsPerEpoch, stepsPerEpoch } = estimate(config, images, backend);
  const fits = epochs * secondsPerEpoch <= minutes * 60;
  const length = fits ? epochs : Math.max(1, Math.floor((minutes * 60) / secondsPerEpoch));
  const effective = batch * accumIter;
  const scale = effective < PAPER_BATCH ? Math.sqrt(PAPER_BATCH / effective) : 1;
  const optim = { epochs: length, warmupEpochs: fits ? warmupEpochs : round(WARMUP_SHARE * length), blr: round(blr * scale) };
  const epoch = secondsPerEpoch < 90 ? `${Math.round(secondsPerEpoch)} s` : `${(secondsPerEpoch / 60).toFixed(1)} min`;
  const span = fits
    ? `the preset's ${epochs} epochs fit ${minutes} min`
    : secondsPerEpoch > minutes * 60
      ? `one epoch (${epoch} on ${backend}) is longer than ${minutes} min: 1 epoch`
      : `${length} epoch(s) of ${epoch} (${stepsPerEpoch} steps) fit ${minutes} min on ${backend}, warmup ${optim.warmupEpochs}`;
  const rate =
    scale === 1
      ? `blr ${optim.blr}`
      : `blr ${optim.blr} (√${Math.round(scale ** 2)} × the preset's, for batch ${effective} < ${PAPER_BATCH})`;
  return { optim, why: `${span}; ${rate}` };
}

const round = (x: number) => Number(x.toPrecision(2));
