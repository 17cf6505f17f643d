import { basename, join } from 'node:path';
import { KNN_BUDGET, liveBackbone, scoreProbe } from '../analysis/knn.js';
import { previewDir, previewImages, previewNoise, renderPreview, writePreview } from '../analysis/preview.js';
import { lossReadEvery } from '../backend.js';
import { finetuneAugment } from '../data/augment.js';
import { DecodeCache } from '../data/cache.js';
import { Loader, TooFewImagesError, type LoaderOptions } from '../data/loader.js';
import type { FinetuneRun } from '../finetune-config.js';
import { evalImages, initBaseline, initialBackbone, pixelBaseline, sourceSeed, splitKey, type LabeledSplit } from './baselines.js';
import { detectTorch } from '../engine.js';
import { homePaths, removeStaleTemps } from '../home.js';
import { isBackbone } from '../model/classifier.js';
import type { PretrainModel } from '../model/pretraining.js';
import type { Rgb8, RgbImage } from '../image.js';
import { cropKernel } from '../recipe.js';
import { loadCheckpoint, type LoadedCheckpoint } from '../train/checkpoint.js';
import { finetuneTask, headFromProbe } from '../train/finetune.js';
import { DivergedError, train, type LoopOptions, type TrainEvent } from '../train/loop.js';
import { pretrainTask } from '../train/pretrain.js';
import { optimOf } from './spec.js';
import { runLogisticProbe } from './logistic-probe.js';
import { CHECKPOINT_FILE } from './reconcile.js';
import { embedsOnly, runTorchJob } from './torch.js';
import type { JobHooks, TrainJob } from './train-job.js';

const SKIPS_NAMED = 10;

/** Runs a training job in this process: the same code in a job process (app, server) and in the CLI. */
export async function runTrainJob(job: TrainJob, hooks: JobHooks): Promise<{ step: number; status: 'finished' | 'paused' }> {
  const saved = lastGood(hooks, job.resumeFrom);
  return runOn(job, saved.hooks).catch((err: Error) => {
    const step = saved.step();
    throw divergedError(err, job, step) ?? dataError(err, job, step) ?? deviceError(err, job, step) ?? err;
  });
}

async function runOn(job: TrainJob, hooks: JobHooks): Promise<{ step: number; status: 'finished' | 'paused' }> {
  const paths = homePaths(job.home);
  for (const t of removeStaleTemps(paths.run(job.runId)))
    hooks.warn(`removed ${basename(t.path)} (${(t.size / 1e6).toFixed(1)} MB), left half-written by process ${t.pid}, which died`);
  const cache = new DecodeCache(paths.cache);
  const { spec } = job;
  const evals: { step: number; top1: number }[] = [];
  const onEvent = (e: TrainEvent) => {
    if (e.type === 'eval') evals.push(e);
    hooks.onEvent(e);
  };
  // A logistic probe of the last block only embeds on the torch engine: the fit is the tfjs path's (runLogisticProbe).
  const torch = job.engine === 'torch' && !embedsOnly(spec);
  const done = torch ? await onTorch(job, { ...hooks, onEvent }) : await onTfjs(job, hooks, cache, onEvent);
  if (done.status === 'finished' && spec.kind === 'finetune' && !spec.config.finetune.linearProbe && 'train' in job.data)
    hooks.onEvent(await finetuneResult(job, spec.config, job.data, cache, evals, hooks));
  return done;
}

/** On the torch engine: a new run's backbone from its source, the rest from the job. */
function onTorch(job: TrainJob, hooks: JobHooks) {
  const init = !job.resumeFrom && job.initFrom ? backbone(loadCheckpoint(job.initFrom)) : undefined;
  return runTorchJob(job, hooks, detectTorch(), init);
}

/** On the tfjs engine, in this process: its task (or the logistic probe) and the one training loop. */
async function onTfjs(job: TrainJob, hooks: JobHooks, cache: DecodeCache, onEvent: (e: TrainEvent) => void) {
  const paths = homePaths(job.home);
  const resumeFrom = job.resumeFrom ? loadCheckpoint(job.resumeFrom) : undefined;
  const source = !resumeFrom && job.initFrom ? loadCheckpoint(job.initFrom) : undefined;
  const init = source && backbone(source);
  const { spec } = job;
  if (spec.kind === 'finetune' && spec.config.finetune.linearProbe && spec.config.finetune.probeRecipe === 'logistic')
    return runLogisticProbe(job, hooks, cache, resumeFrom ?? source);
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
    const probes = job.previewEvery ? await previewImages(job.data.items, imgSize) : [];
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
    const split = job.data;
    task = await labeledTask(spec.config, split, cache, { init, probeInit: !resumeFrom, skipping });
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
    onEvent,
  });
}

/**
 * A fine-tuning task on a labeled split: the training loader (crops and the recipe's augmentation), the validation images
 * at the evaluation transform, and with `probeInit` and the recipe's LP-FT the head fitted as the linear probe.
 */
async function labeledTask(
  config: FinetuneRun,
  split: LabeledSplit,
  cache: DecodeCache,
  o: {
    init?: ReadonlyMap<string, Float32Array>;
    probeInit: boolean;
    skipping?: (batch: number, accumIter: number) => Partial<LoaderOptions<RgbImage>>;
  },
) {
  const { finetune: f, seed, model } = config;
  const val = await evalImages(split.val, model.imgSize, cache);
  const loader = new Loader(split.train, cache, model.imgSize, f.batch, seed, {
    ...o.skipping?.(f.batch, f.accumIter),
    minScale: f.minScale,
    kernel: cropKernel(f, model),
    transform: finetuneAugment(f),
  });
  const labels = split.train.map((t) => t.label);
  const task = finetuneTask(config, { loader, labels, val: { images: val, labels: split.val.map((v) => v.label) } }, o.init);
  if (f.probeInit && o.probeInit)
    await headFromProbe(task.model, await evalImages(split.train, model.imgSize, cache), labels, seed, f.batch).catch((err: Error) => {
      task.dispose();
      throw err;
    });
  return task;
}

/**
 * The `finetune` event: the best validation top-1 (the checkpoint export picks), the probe it started from, and the
 * baselines on the same split — the raw pixels' logistic probe and the same recipe from the initialisation (a scratch
 * run is its own).
 */
async function finetuneResult(
  job: TrainJob,
  config: FinetuneRun,
  split: LabeledSplit,
  cache: DecodeCache,
  evals: { step: number; top1: number }[],
  hooks: JobHooks,
): Promise<TrainEvent> {
  const top1 = Math.max(...evals.map((e) => e.top1));
  const probeTop1 = config.finetune.probeInit ? (evals.find((e) => e.step === 0)?.top1 ?? null) : null;
  if (!config.finetune.baselines) return { type: 'finetune', step: evals.at(-1)?.step ?? 0, top1, probeTop1, baselines: null };
  const K = config.classes.length;
  const pixels = await pixelBaseline(job.home, split, K, config.model.imgSize, config.seed, cache);
  const from = sourceSeed(job.initFrom);
  const key = JSON.stringify({ split: splitKey(split), model: config.model, seed: config.seed, from, finetune: config.finetune });
  if (config.from)
    hooks.info?.('baseline: the same recipe from the initialisation (no pretraining), once per split, model, seed and recipe');
  // The same engine trains it, from the initialisation, into a folder of its own. If the service goes away meanwhile it
  // stops, and nothing is cached: a baseline cut short is no baseline.
  const { signal } = hooks;
  const run = async (dir: string, onEvent: (e: TrainEvent) => void) => {
    const init = await initialBackbone(config.model, job.initFrom, config.seed);
    if (job.engine === 'torch') {
      const baseline = { ...job, resumeFrom: undefined, initFrom: undefined, stopAtStep: undefined, cadence: {} };
      await runTorchJob(baseline, { onEvent, warn: hooks.warn, signal }, detectTorch(), init, dir);
    } else {
      const task = await labeledTask(config, split, cache, { probeInit: true, init });
      const checkpointPath = (step: number) => join(dir, `ckpt-${step}.safetensors`);
      await train(task, { backend: 'baseline', checkpointPath, cadence: {}, onEvent, signal });
    }
    if (signal?.aborted) throw new Error('the baseline was stopped before it finished');
  };
  const init = config.from ? await initBaseline(job.home, key, run) : top1;
  const last = evals.at(-1)?.step ?? 0;
  return { type: 'finetune', step: last, top1, probeTop1, baselines: { pixels, init } };
}

/** The hooks, watched for the step of the run's last good checkpoint: the one resumed from, then each one written. */
function lastGood(hooks: JobHooks, resumeFrom?: string) {
  const resumed = resumeFrom && CHECKPOINT_FILE.exec(basename(resumeFrom));
  let step = resumed ? Number(resumed[1]) : undefined;
  const onEvent = (e: TrainEvent) => {
    if (e.type === 'start' && e.step > 0) step = e.step;
    if (e.type === 'checkpoint') step = e.step;
    hooks.onEvent(e);
  };
  return { hooks: { ...hooks, onEvent }, step: () => step };
}

/** A NaN or a divergence (either engine): the command that resumes from the last good checkpoint at a tenth of the lr. */
function divergedError(err: Error, job: TrainJob, step: number | undefined): Error | undefined {
  const torchNaN = job.engine === 'torch' && /loss is not finite/.test(err.message);
  if (!(err instanceof DivergedError) && !torchNaN) return undefined;
  const what = err.message.replace(/; (stopped without saving, )?the last checkpoint is intact/, '; stopped without saving');
  const o = optimOf(job.spec);
  const lower = o.lr === undefined ? `--blr ${short(o.blr / 10)}` : `--lr ${short(o.lr / 10)}`;
  const command = `localmim ${job.spec.kind}`;
  return new Error(
    step === undefined
      ? `${what}. The run has no checkpoint yet: start it over from step 0 at a lower learning rate with ${command} --resume ${job.runId} ${lower}`
      : `${what}. Resume from the last good checkpoint (step ${step}) at a lower learning rate: ${command} --resume ${job.runId}:${step} ${lower}`,
  );
}

/** A learning rate as one would type it: 0.3, 2e-5. */
function short(x: number): string {
  const n = Number(x.toPrecision(3));
  return n >= 1e-3 && n < 1e4 ? String(n) : n.toExponential().replace('e+', 'e');
}

/** What a failed run still has: its last checkpoint, or nothing yet (`step`: the last checkpoint's, if any). */
const kept = (step: number | undefined) => (step === undefined ? 'the run has no checkpoint yet' : 'the last checkpoint is intact');

/** Too many images gone to fill a step: say how to go on. */
function dataError(err: Error, job: TrainJob, step: number | undefined): Error | undefined {
  if (!(err instanceof TooFewImagesError)) return undefined;
  return new Error(
    `data: ${err.message}; ${kept(step)}: restore the images, or point at their new folder with ` +
      `localmim ${job.spec.kind} --resume ${job.runId} --data DIR (in the app: "Resume from this folder")`,
  );
}

/** A GPU that ran out of memory or was lost: say what it means for the run, and how to go on. */
function deviceError(err: Error, job: TrainJob, step: number | undefined): Error | undefined {
  if (!/out of memory|OutOfMemory|device (was )?lost|DeviceLost|allocation failed|CUDA error/i.test(err.message)) return undefined;
  const what = job.spec.kind === 'pretrain' ? 'pretrain' : 'finetune';
  const device = job.engine === 'torch' ? 'torch engine’s' : job.backend;
  const other = job.engine === 'torch' ? '--engine tfjs' : '--backend wasm';
  return new Error(
    `the ${device} device failed (${err.message.split('\n')[0]}); ${kept(step)}: continue with ` +
      `localmim ${what} --resume ${job.runId} ${other}, or with a smaller batch or image size`,
  );
}

/** The backbone a new run starts from: decoders, tap norms and HOG layers start fresh, whatever shapes the source had. */
const backbone = (c: LoadedCheckpoint) => new Map([...c.tensors].filter(([n]) => isBackbone(n)).map(([n, t]) => [n, t.values] as const));

/** Reconstructions of the probe images under a fixed mask, every `previewEvery` steps; a failure is reported, never fatal. */
function previews(model: PretrainModel, probes: Rgb8[], job: TrainJob, hooks: JobHooks) {
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
