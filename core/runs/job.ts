import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { KNN_BUDGET, liveBackbone, scoreProbe, type ProbeSet } from '../analysis/knn.js';
import { renderPreview } from '../analysis/preview.js';
import { lossReadEvery } from '../backend.js';
import { finetuneAugment } from '../data/augment.js';
import { DecodeCache } from '../data/cache.js';
import { Loader, type DataItem } from '../data/loader.js';
import { evalImage } from '../data/preprocess.js';
import { homePaths } from '../home.js';
import { isBackbone } from '../model/classifier.js';
import type { PretrainModel } from '../model/localmim.js';
import { Rng, seedFor } from '../random.js';
import { loadCheckpoint, type LoadedCheckpoint } from '../train/checkpoint.js';
import { finetuneTask } from '../train/finetune.js';
import { train, type Cadence, type LoopOptions, type TrainEvent } from '../train/loop.js';
import { pretrainTask } from '../train/pretrain.js';
import type { RunSpec } from './spec.js';

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
}

export interface JobHooks {
  signal?: AbortSignal;
  onEvent: (e: TrainEvent) => void;
  onPreview?: (step: number) => void;
  /** Something went wrong that does not stop training (e.g. a preview could not be written). */
  warn: (message: string) => void;
}

const PROBE = 4;
const PROBES = 2;

/** Runs a training job in this process: the same code in a job process (app, server) and in the CLI. */
export async function runTrainJob(job: TrainJob, hooks: JobHooks): Promise<{ step: number; status: 'finished' | 'paused' }> {
  const paths = homePaths(job.home);
  const cache = new DecodeCache(paths.cache);
  const resumeFrom = job.resumeFrom ? loadCheckpoint(job.resumeFrom) : undefined;
  const init = !resumeFrom && job.initFrom ? backbone(loadCheckpoint(job.initFrom)) : undefined;
  const { spec } = job;
  const { imgSize } = spec.config.model;
  let task;
  let knn: LoopOptions['knn'];
  if (spec.kind === 'pretrain') {
    if (!('items' in job.data)) throw new Error('a pretraining job needs unlabeled items');
    const { optim, seed } = spec.config;
    const pretrain = pretrainTask(spec.config, new Loader(job.data.items, cache, imgSize, optim.batch, seed), init);
    const probes = job.previewEvery ? await Promise.all(job.data.items.slice(0, PROBES).map((it) => evalImage(it.abs, imgSize))) : [];
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
          minScale: f.minScale,
          kernel: 'linear',
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
    throw deviceError(err, job) ?? err;
  });
}

/** A GPU that ran out of memory or was lost: say what it means for the run, and how to go on. */
function deviceError(err: Error, job: TrainJob): Error | undefined {
  if (!/out of memory|OutOfMemory|device (was )?lost|DeviceLost|allocation failed/i.test(err.message)) return undefined;
  const what = job.spec.kind === 'pretrain' ? 'pretrain' : 'finetune';
  return new Error(
    `the ${job.backend} device failed (${err.message.split('\n')[0]}); the last checkpoint is intact: continue with ` +
      `localmim ${what} --resume ${job.runId} --backend wasm, or with a smaller batch or image size`,
  );
}

/** The backbone a new run starts from: decoders, tap norms and HOG layers start fresh, whatever shapes the source had. */
const backbone = (c: LoadedCheckpoint) => new Map([...c.tensors].filter(([n]) => isBackbone(n)).map(([n, t]) => [n, t.values] as const));

/** Reconstructions of the probe images under a fixed mask, every `previewEvery` steps; a failure is reported, never fatal. */
function previews(model: PretrainModel, probes: Awaited<ReturnType<typeof evalImage>>[], job: TrainJob, hooks: JobHooks) {
  const noise = new Rng(seedFor(job.spec.config.seed, PROBE)).fill(model.noiseSize(probes.length));
  return async (step: number) => {
    if (!job.previewEvery || !probes.length || (step !== 1 && step % job.previewEvery !== 0)) return;
    try {
      const rendered = await renderPreview(model, probes, noise);
      const dir = join(homePaths(job.home).run(job.runId), 'previews', String(step));
      mkdirSync(dir, { recursive: true });
      rendered.forEach((p, b) => {
        writeFileSync(join(dir, `${b}-input.png`), p.input);
        writeFileSync(join(dir, `${b}-masked.png`), p.masked);
        p.scales.forEach((s, k) => {
          writeFileSync(join(dir, `${b}-${k}-target.png`), s.target);
          writeFileSync(join(dir, `${b}-${k}-pred.png`), s.pred);
        });
      });
      const meta = { step, probes: rendered.length, cells: rendered[0]?.scales.map((s) => s.cell) ?? [] };
      writeFileSync(join(dir, 'preview.json'), JSON.stringify(meta));
      hooks.onPreview?.(step);
    } catch (err) {
      hooks.warn(`preview at step ${step} skipped: ${(err as Error).message}`);
    }
  };
}
