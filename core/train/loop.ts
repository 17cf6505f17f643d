import * as tf from '@tensorflow/tfjs';
import type { ModelFamily, OptimConfig } from '../config.js';
import type { ParamStore } from '../model/module.js';
import { NoRoomError } from '../atomic.js';
import type { ProbeResult } from '../store/store.js';
import { restoreCheckpoint, saveCheckpoint, type LoadedCheckpoint, type StepRecord } from './checkpoint.js';
import type { Optimizer } from './optimizer.js';
import { lrAt } from './schedule.js';

/** What a training run reports; the loop knows nothing of terminals, databases or windows. */
export type TrainEvent =
  | { type: 'start'; step: number; totalSteps: number; stepsPerEpoch: number; backend: string; config: unknown; model?: ModelSummary }
  | ({ type: 'step' } & StepRecord)
  | { type: 'eval'; step: number; epoch: number; top1: number; loss: number }
  /** Weighted kNN accuracy of the backbone on the probe set, the logistic probe's top-1 there, and the seconds both took. */
  | { type: 'knn'; step: number; top1: number; top5: number; probeTop1?: number; seconds: number }
  /** A logistic linear probe's result (core/runs/logistic-probe.ts), with its baselines. */
  | ({ type: 'probe' } & ProbeResult)
  /** `top1`: the validation top-1 of the weights it holds, where they were evaluated. */
  | { type: 'checkpoint'; path: string; step: number; epoch: number; loss: number | null; size: number; hash: string; top1?: number }
  /** `reason`: why a run paused that nobody paused (its checkpoint had no room on the disk). */
  | { type: 'end'; status: 'finished' | 'paused'; step: number; reason?: string }
  /** A finished fine-tune: its best validation top-1, the probe it started from (LP-FT), and its baselines on the same split. */
  | { type: 'finetune'; step: number; top1: number; probeTop1: number | null; baselines: { pixels: number; init: number } | null }
  /** An image that could not be read (deleted or moved during training) was replaced by another; from the job, not the loop. */
  | { type: 'skipped'; path: string; reason: string };

/** The model family, and for pretraining the target shape `[locations, features]` of each scale or stage. */
export interface ModelSummary {
  family: ModelFamily;
  targets?: number[][];
}

/**
 * What pretraining and fine-tuning each supply to the one loop: their model and optimizer (saved in
 * checkpoints), their schedule, one optimizer step, and optionally an evaluation at the end of each epoch.
 */
export interface Task {
  readonly model: { params: ParamStore };
  readonly optimizer: Optimizer;
  /** Saved in every checkpoint's state. */
  readonly config: unknown;
  /** Reported in the `start` event. */
  readonly summary?: ModelSummary;
  readonly optim: OptimConfig;
  /** Micro-batches per epoch (drop_last); an optimizer step takes `optim.accumIter` of them. */
  readonly batchesPerEpoch: number;
  /**
   * One optimizer step on micro-batches `j·accumIter …` of `epoch`; `step` is the index of this step (0-based).
   * Returns `[loss, ...per-scale losses]` on the device, unread.
   */
  step(epoch: number, j: number, step: number, lr: number): Promise<tf.Tensor1D>;
  evaluate?(): Promise<{ top1: number; loss: number }>;
  /** Evaluate, and checkpoint, at step 0 of a new run too (its starting point may be the best: LP-FT). */
  readonly evaluateFirst?: boolean;
  /** After each step (e.g. reconstruction previews); its failures are the task's to handle. */
  afterStep?(step: number): Promise<void>;
  dispose(): void;
}

export interface Cadence {
  /** Checkpoint every this many optimizer steps… */
  everySteps?: number;
  /** …or once this many minutes have passed since the last one, whichever comes first (and at each epoch's end). */
  everyMinutes?: number;
}

export interface LoopOptions {
  backend: string;
  /**
   * Read the losses back every this many steps (default 1). A readback drains a GPU's queue, so GPU backends
   * read every few steps; the steps in between are reported together, each with its own losses. A non-finite
   * loss is found at the next readback, and every checkpoint waits for one, so none holds its weights.
   */
  readEvery?: number;
  checkpointPath: (step: number) => string;
  cadence: Cadence;
  resumeFrom?: LoadedCheckpoint;
  /** Stop (after checkpointing) once this many optimizer steps are done in total. */
  stopAtStep?: number;
  /** Abort = checkpoint at the next step boundary and stop with status 'paused'. */
  signal?: AbortSignal;
  /**
   * kNN monitor: scored before the first step of a new run and at the last checkpoint; then every `every` steps and at
   * each checkpoint, or, without `every`, whenever the time it took so far is under `budget` of the training time so far
   * (checkpoints included: on a small dataset every epoch's end checkpoints).
   */
  knn?: { every?: number; budget: number; score(): Promise<{ top1: number; top5: number; probeTop1?: number }> };
  onEvent: (e: TrainEvent) => void;
}

/**
 * Training went where a lower learning rate may bring it back: stopped at `step`, before anything of it was saved.
 * Whoever knows the run (core/runs/job.ts) adds how to resume from its last good checkpoint.
 */
export class DivergedError extends Error {
  constructor(
    readonly step: number,
    message: string,
  ) {
    super(`${message}; stopped without saving`);
    this.name = 'DivergedError';
  }
}

export class NonFiniteLossError extends DivergedError {
  constructor(
    step: number,
    readonly losses: number[],
  ) {
    super(step, `loss is not finite at optimizer step ${step} (per-scale losses ${losses.join(', ')})`);
    this.name = 'NonFiniteLossError';
  }
}

/**
 * A finite divergence: a step's loss over `factor` × the median of the last `window` steps' (once `minSteps` are
 * known), or at a checkpoint any weight's magnitude past `weightBound`. Either stops the run like a NaN.
 */
export const DIVERGENCE = { factor: 100, window: 50, minSteps: 10, weightBound: 1e6 };

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};

/** Throws if the step's loss is not finite or is DIVERGENCE.factor × the recent median; else adds it to `recent`. */
function checkLoss(step: number, loss: number, perScale: number[], recent: number[]): void {
  if (!Number.isFinite(loss)) throw new NonFiniteLossError(step, perScale.length ? perScale : [loss]);
  if (recent.length >= DIVERGENCE.minSteps) {
    const m = median(recent);
    if (loss > DIVERGENCE.factor * m)
      throw new DivergedError(
        step,
        `loss diverged at optimizer step ${step}: ${loss.toPrecision(3)}, over ${DIVERGENCE.factor}× the median ${m.toPrecision(3)} of the last ${recent.length} steps`,
      );
  }
  recent.push(loss);
  if (recent.length > DIVERGENCE.window) recent.shift();
}

/** Throws if a weight's magnitude is past DIVERGENCE.weightBound (or not finite), naming the tensor: one readback. */
async function checkWeights(step: number, params: ParamStore): Promise<void> {
  const names = [...params.vars.keys()];
  if (!names.length) return;
  const peaks = tf.tidy(() => tf.stack([...params.vars.values()].map((v) => tf.max(tf.abs(v)))));
  const values = await peaks.data();
  peaks.dispose();
  const i = values.findIndex((x) => !(x <= DIVERGENCE.weightBound));
  if (i < 0) return;
  const how = Number.isFinite(values[i])
    ? `reaches magnitude ${values[i]!.toExponential(1)}, past ${DIVERGENCE.weightBound}`
    : 'is not finite';
  throw new DivergedError(step, `weights diverged by optimizer step ${step}: ${names[i]} ${how}`);
}

/**
 * The one training loop: per-iteration learning rate, exact resume, checkpoints by step count, time and epoch,
 * evaluation at each epoch's end, pause; a non-finite or diverged loss, or diverged weights, stop it before the next
 * checkpoint (DivergedError). Disposes the task when done.
 */
export async function train(task: Task, o: LoopOptions): Promise<{ step: number; status: 'finished' | 'paused' }> {
  const { optim } = task;
  let pending: { step: number; lr: number; values: tf.Tensor1D }[] = [];
  try {
    const stepsPerEpoch = Math.floor(task.batchesPerEpoch / optim.accumIter);
    if (stepsPerEpoch < 1) throw new Error(`data: ${task.batchesPerEpoch} batches per epoch, fewer than accumIter=${optim.accumIter}`);
    if (o.resumeFrom) restoreCheckpoint(o.resumeFrom, task.model, task.optimizer);
    const totalSteps = optim.epochs * stepsPerEpoch;
    let step = o.resumeFrom?.state.step ?? 0;
    o.onEvent({ type: 'start', step, totalSteps, stepsPerEpoch, backend: o.backend, config: task.config, model: task.summary });

    let recent: StepRecord[] = [];
    const lossWindow: number[] = [];
    let lastCheckpoint = performance.now();
    const images = optim.batch * optim.accumIter;
    let since = performance.now();
    // Reports the pending steps: one readback for all of them.
    const flush = async () => {
      const done = pending;
      if (!done.length) return;
      pending = [];
      const all = tf.concat(done.map((p) => p.values));
      const values = await all.data();
      tf.dispose([all, ...done.map((p) => p.values)]);
      const seconds = (performance.now() - since) / 1000 / done.length;
      const width = values.length / done.length;
      for (const [i, p] of done.entries()) {
        const [loss, ...perScale] = values.subarray(i * width, (i + 1) * width);
        checkLoss(p.step, loss!, perScale, lossWindow);
        const record = {
          step: p.step,
          epoch: p.step / stepsPerEpoch,
          samples: p.step * images,
          loss: loss!,
          losses: perScale,
          lr: p.lr,
          imagesPerS: images / seconds,
        };
        recent.push(record);
        o.onEvent({ type: 'step', ...record });
      }
    };
    const started = performance.now();
    let knnSeconds = 0;
    let lastKnnSeconds = 0;
    let knnStep = -1;
    const knn = async () => {
      if (!o.knn || knnStep === step) return;
      await flush();
      const t0 = performance.now();
      const scores = await o.knn.score();
      const seconds = (performance.now() - t0) / 1000;
      knnSeconds += seconds;
      lastKnnSeconds = seconds;
      knnStep = step;
      o.onEvent({ type: 'knn', step, ...scores, seconds });
    };
    const knnDue = () => {
      if (!o.knn) return false;
      if (o.knn.every !== undefined) return step % o.knn.every === 0;
      // Within budget once the next evaluation, costing as much as the last, is done.
      return knnSeconds + lastKnnSeconds <= o.knn.budget * ((performance.now() - started) / 1000 - knnSeconds);
    };
    let evaluated: { step: number; top1: number } | undefined;
    const evaluate = async (evaluator: () => Promise<{ top1: number; loss: number }>) => {
      await flush();
      const scores = await evaluator();
      evaluated = { step, top1: scores.top1 };
      o.onEvent({ type: 'eval', step, epoch: step / stepsPerEpoch, ...scores });
    };
    const checkpoint = async (last: boolean) => {
      await flush();
      await checkWeights(step, task.model.params);
      const epoch = step / stepsPerEpoch;
      const loss = recent.length ? recent.reduce((a, r) => a + r.loss, 0) / recent.length : null;
      const path = o.checkpointPath(step);
      const state = { step, epoch, loss, config: task.config, steps: recent };
      const written = await saveCheckpoint(path, task.model, task.optimizer, state);
      const top1 = evaluated?.step === step ? evaluated.top1 : undefined;
      o.onEvent({ type: 'checkpoint', path, step, epoch, loss, ...written, ...(top1 !== undefined && { top1 }) });
      recent = [];
      if (last || o.knn?.every !== undefined || knnDue()) await knn();
      lastCheckpoint = performance.now();
    };
    const { everySteps, everyMinutes } = o.cadence;
    if (step === 0) await knn();
    if (step === 0 && task.evaluateFirst && task.evaluate) {
      await evaluate(task.evaluate);
      await checkpoint(false);
    }

    while (step < totalSteps) {
      const epoch = Math.floor(step / stepsPerEpoch);
      const j = step % stepsPerEpoch;
      const lr = lrAt(epoch + j / stepsPerEpoch, optim);
      if (!pending.length) since = performance.now();
      const values = await task.step(epoch, j, step, lr);
      step += 1;
      pending.push({ step, lr, values });
      if (pending.length >= (o.readEvery ?? 1)) await flush();
      const epochEnd = step % stepsPerEpoch === 0;
      if (epochEnd && task.evaluate) await evaluate(task.evaluate);
      await task.afterStep?.(step);
      if (knnDue()) await knn();

      const stopping = o.signal?.aborted || step === o.stopAtStep;
      const due =
        epochEnd ||
        (everySteps !== undefined && step % everySteps === 0) ||
        (everyMinutes !== undefined && performance.now() - lastCheckpoint > everyMinutes * 60_000);
      const noRoom =
        step === totalSteps || stopping || due ? await checkpoint(step === totalSteps || stopping).then(() => null, ifNoRoom) : null;
      if (noRoom) {
        o.onEvent({ type: 'end', status: 'paused', step, reason: noRoom });
        return { step, status: 'paused' };
      }
      if (stopping && step < totalSteps) {
        o.onEvent({ type: 'end', status: 'paused', step });
        return { step, status: 'paused' };
      }
      await new Promise((resolve) => setImmediate(resolve)); // let signals and I/O callbacks run
    }
    o.onEvent({ type: 'end', status: 'finished', step });
    return { step, status: 'finished' };
  } finally {
    tf.dispose(pending.map((p) => p.values));
    task.dispose();
  }
}

/** A checkpoint the disk has no room for pauses the run (the previous one is intact); other failures stay failures. */
function ifNoRoom(err: unknown): string {
  if (err instanceof NoRoomError) return err.message;
  throw err;
}
