import { parseRunConfig, type RunConfig } from '../config.js';
import type { Loader } from '../data/loader.js';
import { LocalMIM } from '../model/localmim.js';
import { Rng, seedFor } from '../random.js';
import { saveCheckpoint, restoreCheckpoint, type LoadedCheckpoint } from './checkpoint.js';
import { lrAt } from './schedule.js';
import { TrainStep } from './step.js';

/** What a pretraining run reports; the trainer knows nothing of terminals, databases or windows. */
export type TrainEvent =
  | { type: 'start'; step: number; totalSteps: number; stepsPerEpoch: number; backend: string; config: RunConfig }
  | { type: 'step'; step: number; epoch: number; samples: number; loss: number; losses: number[]; lr: number; imagesPerS: number }
  | { type: 'eval'; step: number; epoch: number; top1: number; loss: number }
  | { type: 'checkpoint'; path: string; step: number; epoch: number; loss: number | null; size: number; hash: string }
  | { type: 'end'; status: 'finished' | 'paused'; step: number };

export interface PretrainOptions {
  config: RunConfig;
  loader: Loader;
  backend: string;
  /** Checkpoint path for a given step. */
  checkpointPath: (step: number) => string;
  checkpointEverySteps?: number;
  checkpointEveryMinutes?: number;
  resumeFrom?: LoadedCheckpoint;
  /** Starting weights by name (e.g. an imported or earlier backbone); the rest keeps its initialisation. */
  init?: ReadonlyMap<string, Float32Array>;
  /** Stop (after checkpointing) once this many optimizer steps are done in total. */
  stopAtStep?: number;
  /** Called after every step, e.g. to render reconstruction previews. */
  afterStep?: (model: LocalMIM, step: number) => Promise<void>;
  /** Abort = checkpoint at the next step boundary and stop with status 'paused'. */
  signal?: AbortSignal;
  onEvent: (e: TrainEvent) => void;
}

const MASK = 3;

/** The pretraining loop (spec §13): per-iteration lr, accumulation, checkpoints, exact resume. */
export async function pretrain(o: PretrainOptions): Promise<{ step: number; status: 'finished' | 'paused' }> {
  const cfg = parseRunConfig(o.config);
  const { optim, seed } = cfg;
  const model = new LocalMIM(cfg.model, seed);
  const trainer = new TrainStep(model, optim);
  try {
    if (o.init && !o.resumeFrom) model.params.assign(o.init);
    if (o.resumeFrom) restoreCheckpoint(o.resumeFrom, model, trainer.optimizer);
    const stepsPerEpoch = Math.floor(o.loader.batchesPerEpoch / optim.accumIter);
    if (stepsPerEpoch < 1) throw new Error(`data: ${o.loader.batchesPerEpoch} batches per epoch, fewer than accumIter=${optim.accumIter}`);
    const totalSteps = optim.epochs * stepsPerEpoch;
    let step = o.resumeFrom?.state.step ?? 0;
    o.onEvent({ type: 'start', step, totalSteps, stepsPerEpoch, backend: o.backend, config: cfg });

    let sinceCheckpoint: number[] = [];
    let lastCheckpoint = performance.now();
    const checkpoint = () => {
      const epoch = step / stepsPerEpoch;
      const loss = sinceCheckpoint.length ? sinceCheckpoint.reduce((a, b) => a + b, 0) / sinceCheckpoint.length : null;
      const path = o.checkpointPath(step);
      const written = saveCheckpoint(path, model, trainer.optimizer, { step, epoch, loss, config: cfg });
      o.onEvent({ type: 'checkpoint', path, step, epoch, loss, ...written });
      sinceCheckpoint = [];
      lastCheckpoint = performance.now();
    };

    while (step < totalSteps) {
      const t0 = performance.now();
      const epoch = Math.floor(step / stepsPerEpoch);
      const j = step % stepsPerEpoch;
      const micro = await Promise.all(Array.from({ length: optim.accumIter }, (_, a) => o.loader.get(epoch, j * optim.accumIter + a)));
      const batches = micro.map((images, a) =>
        model.prepare(images, new Rng(seedFor(seed, MASK, step, a)).fill(images.length * model.dims.L)),
      );
      const r = trainer.run(batches, lrAt(epoch + j / stepsPerEpoch, optim));
      step += 1;
      sinceCheckpoint.push(r.loss);
      const images = optim.batch * optim.accumIter;
      const seconds = (performance.now() - t0) / 1000;
      o.onEvent({
        type: 'step',
        step,
        epoch: step / stepsPerEpoch,
        samples: step * images,
        loss: r.loss,
        losses: r.losses,
        lr: r.lr,
        imagesPerS: images / seconds,
      });

      await o.afterStep?.(model, step);
      const stopping = o.signal?.aborted || step === o.stopAtStep;
      const due =
        (o.checkpointEverySteps && step % o.checkpointEverySteps === 0) ||
        (o.checkpointEveryMinutes && performance.now() - lastCheckpoint > o.checkpointEveryMinutes * 60_000);
      if (step === totalSteps || stopping || due) checkpoint();
      if (stopping && step < totalSteps) {
        o.onEvent({ type: 'end', status: 'paused', step });
        return { step, status: 'paused' };
      }
      await new Promise((resolve) => setImmediate(resolve)); // let signals and I/O callbacks run
    }
    o.onEvent({ type: 'end', status: 'finished', step });
    return { step, status: 'finished' };
  } finally {
    trainer.dispose();
    model.dispose();
  }
}
