import type { OptimConfig, RunConfig } from '../config.js';
import { estimate } from './estimate.js';

/**
 * The effective batch the paper's base learning rates were tuned at (the official ViT-B/L recipes: 4096 images a
 * step). Below it AdamW wants the rate scaled by the square root of the batch ratio, not linearly: at batch 32 the
 * linear rule leaves blr 2e-4 at lr 2.5e-5, which barely moves the weights in the hundreds of steps a CPU run makes
 * (docs/results.md#learning-rate-and-budget measures it).
 */
export const PAPER_BATCH = 4096;
/** A new run's time budget in minutes, unless its schedule is given. */
export const DEFAULT_MINUTES = 30;
/** The share of a fitted schedule spent warming up (the official recipes: 40 of 800 epochs). */
const WARMUP_SHARE = 0.05;

/** A pretraining schedule fitted to a time budget, and why, in one line. */
export interface FittedSchedule {
  optim: Pick<OptimConfig, 'epochs' | 'warmupEpochs' | 'blr'>;
  why: string;
}

/**
 * The schedule (length, warmup, base learning rate) that fits `minutes` on this backend for `images` images
 * (docs/method.md#time-budget): the preset's own length where it fits, else as many whole epochs as fit (at least
 * one), warmup 5 % of them; the preset's blr scaled by √(paper batch / effective batch).
 */
export function fitSchedule(config: RunConfig, images: number, backend: string, minutes: number): FittedSchedule {
  const { epochs, blr, batch, accumIter, warmupEpochs } = config.optim;
  const { secondsPerEpoch, stepsPerEpoch } = estimate(config, images, backend);
  const budget = minutes * 60;
  const fits = epochs * secondsPerEpoch <= budget;
  const length = fits ? epochs : Math.max(1, Math.floor(budget / Math.max(secondsPerEpoch, 1e-9)));
  const effective = batch * accumIter;
  const scale = effective < PAPER_BATCH ? Math.sqrt(PAPER_BATCH / effective) : 1;
  const optim = {
    epochs: length,
    warmupEpochs: fits ? warmupEpochs : round(WARMUP_SHARE * length),
    blr: round(blr * scale),
  };
  return { optim, why: describe(optim, { fits, minutes, backend, secondsPerEpoch, stepsPerEpoch, effective, scale }) };
}

const round = (x: number) => Number(x.toPrecision(2));

function describe(
  o: FittedSchedule['optim'],
  at: { fits: boolean; minutes: number; backend: string; secondsPerEpoch: number; stepsPerEpoch: number; effective: number; scale: number },
): string {
  const epoch = at.secondsPerEpoch < 90 ? `${Math.round(at.secondsPerEpoch)} s` : `${(at.secondsPerEpoch / 60).toFixed(1)} min`;
  const length = at.fits
    ? `the preset's ${o.epochs} epochs fit ${at.minutes} min`
    : at.secondsPerEpoch > at.minutes * 60
      ? `one epoch (${epoch} on ${at.backend}) is longer than ${at.minutes} min: 1 epoch`
      : `${o.epochs} epoch(s) of ${epoch} (${at.stepsPerEpoch} steps) fit ${at.minutes} min on ${at.backend}, warmup ${o.warmupEpochs}`;
  const rate =
    at.scale === 1
      ? `blr ${o.blr}`
      : `blr ${o.blr} (√${Math.round(at.scale ** 2)} × the preset's, for batch ${at.effective} < ${PAPER_BATCH})`;
  return `${length}; ${rate}`;
}
