import type { OptimConfig } from '../config.js';
import type { ParamStore } from '../model/params.js';
import { restoreCheckpoint, saveCheckpoint, type LoadedCheckpoint } from './checkpoint.js';
import type { Optimizer } from './optimizer.js';
import { lrAt } from './schedule.js';

/** What a training run reports; the loop knows nothing of terminals, databases or windows. */
export type TrainEvent =
  | { type: 'start'; step: number; totalSteps: number; stepsPerEpoch: number; backend: string; config: unknown }
  | { type: 'step'; step: number; epoch: number; samples: number; loss: number; losses: number[]; lr: number; imagesPerS: number }
  | { type: 'eval'; step: number; epoch: number; top1: number; loss: number }
  | { type: 'checkpoint'; path: string; step: number; epoch: number; loss: number | null; size: number; hash: string }
  | { type: 'end'; status: 'finished' | 'paused'; step: number };

/**
 * What pretraining and fine-tuning each supply to the one loop: their model and optimizer (saved in
 * checkpoints), their schedule, one optimizer step, and optionally an evaluation at the end of each epoch.
 */
export interface Task {
  readonly model: { params: ParamStore };
  readonly optimizer: Optimizer;
  /** Saved in every checkpoint's state. */
  readonly config: unknown;
  readonly optim: OptimConfig;
  /** Micro-batches per epoch (drop_last); an optimizer step takes `optim.accumIter` of them. */
  readonly batchesPerEpoch: number;
  /** One optimizer step on micro-batches `j·accumIter …` of `epoch`; `step` is the index of this step (0-based). */
  step(epoch: number, j: number, step: number, lr: number): Promise<{ loss: number; losses: number[] }>;
  evaluate?(): Promise<{ top1: number; loss: number }>;
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
  checkpointPath: (step: number) => string;
  cadence: Cadence;
  resumeFrom?: LoadedCheckpoint;
  /** Stop (after checkpointing) once this many optimizer steps are done in total. */
  stopAtStep?: number;
  /** Abort = checkpoint at the next step boundary and stop with status 'paused'. */
  signal?: AbortSignal;
  onEvent: (e: TrainEvent) => void;
}

/**
 * The one training loop: per-iteration learning rate, exact resume, checkpoints by step count, time and epoch,
 * evaluation at each epoch's end, pause. Disposes the task when done.
 */
export async function train(task: Task, o: LoopOptions): Promise<{ step: number; status: 'finished' | 'paused' }> {
  const { optim } = task;
  try {
    const stepsPerEpoch = Math.floor(task.batchesPerEpoch / optim.accumIter);
    if (stepsPerEpoch < 1) throw new Error(`data: ${task.batchesPerEpoch} batches per epoch, fewer than accumIter=${optim.accumIter}`);
    if (o.resumeFrom) restoreCheckpoint(o.resumeFrom, task.model, task.optimizer);
    const totalSteps = optim.epochs * stepsPerEpoch;
    let step = o.resumeFrom?.state.step ?? 0;
    o.onEvent({ type: 'start', step, totalSteps, stepsPerEpoch, backend: o.backend, config: task.config });

    let losses: number[] = [];
    let lastCheckpoint = performance.now();
    const checkpoint = async () => {
      const epoch = step / stepsPerEpoch;
      const loss = losses.length ? losses.reduce((a, b) => a + b, 0) / losses.length : null;
      const path = o.checkpointPath(step);
      const written = await saveCheckpoint(path, task.model, task.optimizer, { step, epoch, loss, config: task.config });
      o.onEvent({ type: 'checkpoint', path, step, epoch, loss, ...written });
      losses = [];
      lastCheckpoint = performance.now();
    };
    const { everySteps, everyMinutes } = o.cadence;

    while (step < totalSteps) {
      const t0 = performance.now();
      const epoch = Math.floor(step / stepsPerEpoch);
      const j = step % stepsPerEpoch;
      const lr = lrAt(epoch + j / stepsPerEpoch, optim);
      const r = await task.step(epoch, j, step, lr);
      step += 1;
      losses.push(r.loss);
      const images = optim.batch * optim.accumIter;
      o.onEvent({
        type: 'step',
        step,
        epoch: step / stepsPerEpoch,
        samples: step * images,
        loss: r.loss,
        losses: r.losses,
        lr,
        imagesPerS: images / ((performance.now() - t0) / 1000),
      });
      const epochEnd = step % stepsPerEpoch === 0;
      if (epochEnd && task.evaluate) o.onEvent({ type: 'eval', step, epoch: step / stepsPerEpoch, ...(await task.evaluate()) });
      await task.afterStep?.(step);

      const stopping = o.signal?.aborted || step === o.stopAtStep;
      const due =
        epochEnd ||
        (everySteps !== undefined && step % everySteps === 0) ||
        (everyMinutes !== undefined && performance.now() - lastCheckpoint > everyMinutes * 60_000);
      if (step === totalSteps || stopping || due) await checkpoint();
      if (stopping && step < totalSteps) {
        o.onEvent({ type: 'end', status: 'paused', step });
        return { step, status: 'paused' };
      }
      await new Promise((resolve) => setImmediate(resolve)); // let signals and I/O callbacks run
    }
    o.onEvent({ type: 'end', status: 'finished', step });
    return { step, status: 'finished' };
  } finally {
    task.dispose();
  }
}
