import { modelFamily, parseRunConfig, type RunConfig } from '../config.js';
import { estimate } from './estimate.js';

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
 * line: `sides` are the images' short sides (one per image). The learning rate stays the preset's: 5× and 15× it
 * learned no faster on the reproduction (docs/results.md#learning-rate-against-time).
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
 * A ViT's input no larger than its images (their median side rounded up to a multiple of its token grid), with the
 * patch that keeps the grid:
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
  const { epochs, warmupEpochs } = config.optim;
  const { secondsPerEpoch, stepsPerEpoch } = estimate(config, images, backend);
  const fits = epochs * secondsPerEpoch <= minutes * 60;
  const length = fits ? epochs : Math.max(1, Math.floor((minutes * 60) / secondsPerEpoch));
  const optim = { epochs: length, warmupEpochs: fits ? warmupEpochs : round(WARMUP_SHARE * length) };
  const epoch = secondsPerEpoch < 90 ? `${Math.round(secondsPerEpoch)} s` : `${(secondsPerEpoch / 60).toFixed(1)} min`;
  const why = fits
    ? `the preset's ${epochs} epochs fit ${minutes} min`
    : secondsPerEpoch > minutes * 60
      ? `one epoch (${epoch} on ${backend}) is longer than ${minutes} min: 1 epoch`
      : `${length} epoch(s) of ${epoch} (${stepsPerEpoch} steps) fit ${minutes} min on ${backend}, warmup ${optim.warmupEpochs}`;
  return { optim, why };
}

const round = (x: number) => Number(x.toPrecision(2));
