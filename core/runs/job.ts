import { basename } from 'node:path';
import { KNN_BUDGET, liveBackbone, scoreProbe, type ProbeSet } from '../analysis/knn.js';
import { PREVIEW_PROBES, previewDir, previewNoise, renderPreview, writePreview } from '../analysis/preview.js';
import { lossReadEvery } from '../backend.js';
import { finetuneAugment } from '../data/augment.js';
import { DecodeCache } from '../data/cache.js';
import { UnreadableImageError } from '../data/decode.js';
import { Loader, TooFewImagesError, type DataItem, type LoaderOptions } from '../data/loader.js';
import { evalImage } from '../data/preprocess.js';
import { probeTorch, type Engine } from '../engine.js';
import { homePaths, removeStaleTemps } from '../home.js';
import { isBackbone } from '../model/classifier.js';
import type { PretrainModel } from '../model/localmim.js';
import type { RgbImage } from '../targets/image.js';
import { cropKernel } from '../recipe.js';
import { loadCheckpoint, type LoadedCheckpoint } from '../train/checkpoint.js';
import { finetuneTask } from '../train/finetune.js';
import { train, type Cadence, type LoopOptions, type TrainEvent } from '../train/loop.js';
import { pretrainTask } from '../train/pretrain.js';
import type { RunSpec } from './spec.js';
import { runTorchJob, type TorchOptions } from './torch.js';

export type LabeledItem = DataItem & { label: number };

/** Everything a training process needs, validated by `prepare` and claimed by `begin`: it touches no database. */
export interface TrainJob {
  kind: 'train';
  runId: number;
  home: string;
  spec: Extract<RunSpec, { kind: 'pretrain' | 'finetune' }>;
  /** Pretraining: every usable image. Fine-tuning: the labeled split. */
  data: { items: DataItem[] } | { train: LabeledItem[]; val: LabeledItem[] };
  /** A checkpoint whose weights a new run starts from (pretraining `--init`, or the run a fine-tune starts from). */
  initFrom?: string;
  resumeFrom?: string;
  cadence: Cadence;
  stopAtStep?: number;
  /** Render reconstruction previews every this many steps (pretraining); none when absent. */
  previewEvery?: number;
  /** Pretraining: the labeled probe set the kNN monitor scores the backbone on. */
  probe?: ProbeSet;
  backend: string;
  /** What trains it (default tfjs, on `backend`); the torch engine runs core/torch/train.py with `torch`'s options. */
  engine?: Engine;
  torch?: TorchOptions;
}

export interface JobHooks {
  signal?: AbortSignal;
  onEvent: (e: TrainEvent) => void;
  onPreview?: (step: number) => void;
  /** Something went wrong that does not stop training (e.g. a preview could not be written). */
  warn: (message: string) => void;
}

const SKIPS_NAMED = 10;

/** Runs a training job in this process: the same code in a job process (app, server) and in the CLI. */
export async function runTrainJob(job: TrainJob, hooks: JobHooks): Promise<{ step: number; status: 'finished' | 'paused' }> {
  const paths = homePaths(job.home);
  for (const t of removeStaleTemps(paths.run(job.runId)))
    hooks.warn(`removed ${basename(t.path)} (${(t.size / 1e6).toFixed(1)} MB), left half-written by process ${t.pid}, which died`);
  if (job.engine === 'torch') {
    const init = !job.resumeFrom && job.initFrom ? backbone(loadCheckpoint(job.initFrom)) : undefined;
    return runTorchJob(job, hooks, probeTorch(), init).catch((err: Error) => {
      throw deviceError(err, job) ?? err;
    });
  }
  const cache = new DecodeCache(paths.cache);
  const resumeFrom = job.resumeFrom ? loadCheckpoint(job.resumeFrom) : undefined;
  const init = !resumeFrom && job.initFrom ? backbone(loadCheckpoint(job.initFrom)) : undefined;
  const { spec } = job;
  const { imgSize } = spec.config.model;
  // A missing or unreadable image is told of and replaced; training goes on while a step's worth of images remain.
  // Each is counted; the first few are named, then one line per hundred (a moved folder would be thousands).
  let skipped = 0;
  const skipping = (batch: number, accumIter: number): Pick<LoaderOptions<RgbImage>, 'onSkip' | 'minImages'> => ({
    minImages: batch * accumIter,
    onSkip: (item, reason, readable) => {
      hooks.onEvent({ type: 'skipped', path: item.abs, reason });
      if (++skipped <= SKIPS_NAMED) hooks.warn(`skipped ${item.abs}: ${reason}; another image takes its place (${readable} readable)`);
      else if (skipped % 100 === 0) hooks.warn(`skipped ${skipped} images so far, e.g. ${item.abs} (${reason}); ${readable} readable`);
    },
  });
  let task;
  let knn: LoopOptions['knn'];
  if (spec.kind === 'pretrain') {
    if (!('items' in job.data)) throw new Error('a pretraining job needs unlabeled items');
    const { optim, seed } = spec.config;
    const loader = new Loader(job.data.items, cache, imgSize, optim.batch, seed, skipping(optim.batch, optim.accumIter));
    const pretrain = pretrainTask(spec.config, loader, init);
    const probes = job.previewEvery ? await readableProbes(job.data.items, imgSize) : [];
    task = { ...pretrain, afterStep: previews(pretrain.model, probes, job, hooks) };
    const { probe } = job;
    const { model } = spec.config;
    if (probe)
      knn = {
        every: probe.every,
        budget: KNN_BUDGET,
        score: () => scoreProbe(liveBackbone(pretrain.model.params, model), model, probe, cache),
      };
  } else {
    if (!('train' in job.data)) throw new Error('a fine-tuning job needs a labeled split');
    const { finetune: f, seed } = spec.config;
    const val = await Promise.all(job.data.val.map((v) => evalImage(v.abs, imgSize, { cache, hash: v.hash })));
    task = finetuneTask(
      spec.config,
      {
        loader: new Loader(job.data.train, cache, imgSize, f.batch, seed, {
          ...skipping(f.batch, f.accumIter),
          minScale: f.minScale,
          kernel: cropKernel(f, spec.config.model),
          transform: finetuneAugment(f),
        }),
        labels: job.data.train.map((t) => t.label),
        val: { images: val, labels: job.data.val.map((v) => v.label) },
      },
      init,
    );
  }
  return train(task, {
    backend: job.backend,
    readEvery: lossReadEvery(job.backend),
    checkpointPath: (step) => paths.checkpoint(job.runId, step),
    cadence: job.cadence,
    resumeFrom,
    stopAtStep: job.stopAtStep,
    signal: hooks.signal,
    knn,
    onEvent: hooks.onEvent,
  }).catch((err: Error) => {
    throw deviceError(err, job) ?? dataError(err, job) ?? err;
  });
}

/** Too many images gone to fill a step: say how to go on. */
function dataError(err: Error, job: TrainJob): Error | undefined {
  if (!(err instanceof TooFewImagesError)) return undefined;
  return new Error(
    `data: ${err.message}; the last checkpoint is intact: restore the images, or point at their new folder with ` +
      `localmim ${job.spec.kind} --resume ${job.runId} --data DIR (in the app: "Resume from this folder")`,
  );
}

/** The first PROBES images that can be read, for previews. */
async function readableProbes(items: DataItem[], imgSize: number) {
  const probes = [];
  for (const it of items) {
    if (probes.length === PREVIEW_PROBES) break;
    const img = await evalImage(it.abs, imgSize).catch((err: Error) => {
      if (!(err instanceof UnreadableImageError)) throw err;
    });
    if (img) probes.push(img);
  }
  return probes;
}

/** A GPU that ran out of memory or was lost: say what it means for the run, and how to go on. */
function deviceError(err: Error, job: TrainJob): Error | undefined {
  if (!/out of memory|OutOfMemory|device (was )?lost|DeviceLost|allocation failed|CUDA error/i.test(err.message)) return undefined;
  const what = job.spec.kind === 'pretrain' ? 'pretrain' : 'finetune';
  const device = job.engine === 'torch' ? 'torch engine’s' : job.backend;
  const other = job.engine === 'torch' ? '--engine tfjs' : '--backend wasm';
  return new Error(
    `the ${device} device failed (${err.message.split('\n')[0]}); the last checkpoint is intact: continue with ` +
      `localmim ${what} --resume ${job.runId} ${other}, or with a smaller batch or image size`,
  );
}

/** The backbone a new run starts from: decoders, tap norms and HOG layers start fresh, whatever shapes the source had. */
const backbone = (c: LoadedCheckpoint) => new Map([...c.tensors].filter(([n]) => isBackbone(n)).map(([n, t]) => [n, t.values] as const));

/** Reconstructions of the probe images under a fixed mask, every `previewEvery` steps; a failure is reported, never fatal. */
function previews(model: PretrainModel, probes: Awaited<ReturnType<typeof evalImage>>[], job: TrainJob, hooks: JobHooks) {
  const noise = previewNoise(job.spec.config.seed, model.noiseSize(probes.length));
  return async (step: number) => {
    if (!job.previewEvery || !probes.length || (step !== 1 && step % job.previewEvery !== 0)) return;
    try {
      writePreview(previewDir(job.home, job.runId, step), step, await renderPreview(model, probes, noise));
      hooks.onPreview?.(step);
    } catch (err) {
      hooks.warn(`preview at step ${step} skipped: ${(err as Error).message}`);
    }
  };
}
