import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { writeAtomic } from '../atomic.js';
import { fitLinearProbe, probeTop1 } from '../analysis/linear-probe.js';
import type { ModelConfig } from '../config.js';
import type { DecodeCache } from '../data/cache.js';
import { evalImage } from '../data/preprocess.js';
import { isBackbone } from '../model/classifier.js';
import { readSafetensorsMetadata } from '../safetensors.js';
import { pretrainModel } from '../train/pretrain.js';
import type { TrainEvent } from '../train/loop.js';
import type { LabeledItem } from './train-job.js';

export interface LabeledSplit {
  train: LabeledItem[];
  val: LabeledItem[];
}

/** A cache key of what a result depends on. */
export const cacheKey = (...parts: string[]) => createHash('sha256').update(parts.join('\n')).digest('hex');

/** What a split is, for cache keys: each image's content hash and label, training and validation apart. */
export const splitKey = (s: LabeledSplit) =>
  [...s.train.map((t) => `t${t.hash}:${t.label}`), ...s.val.map((t) => `v${t.hash}:${t.label}`)].join(',');

/** A top-1 computed once per key under `<home>/embeddings/baselines` (shared with the linear probe's baselines). */
export async function cachedTop1(home: string, key: string, compute: () => Promise<number>): Promise<number> {
  const dir = join(home, 'embeddings', 'baselines');
  const file = join(dir, `${key.slice(0, 32)}.json`);
  if (existsSync(file)) return (JSON.parse(readFileSync(file, 'utf8')) as { top1: number }).top1;
  const top1 = await compute();
  writeAtomic(file, JSON.stringify({ top1 }));
  return top1;
}

/** The seed a source run's checkpoint says its model was initialised with (a pretraining run's config), if any. */
export function sourceSeed(checkpoint: string | undefined): number | undefined {
  const state = checkpoint ? readSafetensorsMetadata(checkpoint)?.state : undefined;
  const seed = state ? (JSON.parse(state) as { config?: { seed?: unknown } }).config?.seed : undefined;
  return typeof seed === 'number' ? seed : undefined;
}

/**
 * "No pretraining" for a run probed or fine-tuned from a pretraining run: the backbone as that run started (its
 * model, the seed in its checkpoint at `source`, else `seed`), so that the baseline differs from the run by its
 * pretraining alone, not by another initialisation scheme.
 */
export async function initialBackbone(model: ModelConfig, source: string | undefined, seed: number) {
  const { params } = pretrainModel(model, sourceSeed(source) ?? seed);
  try {
    const out = new Map<string, Float32Array>();
    for (const [name, v] of params.vars) if (isBackbone(name)) out.set(name, (await v.data()) as Float32Array);
    return out;
  } finally {
    params.dispose();
  }
}

/** Images at the model's input size (the evaluation transform). */
export const evalImages = (items: LabeledItem[], imgSize: number, cache: DecodeCache) =>
  Promise.all(items.map((it) => evalImage(it.abs, imgSize, { cache, hash: it.hash })));

/** Images at the model's input size (the evaluation transform) as rows of RGB values: the raw-pixel baseline's features. */
export async function pixelRows(items: { abs: string; hash: string }[], imgSize: number, cache?: DecodeCache) {
  const dim = imgSize * imgSize * 3;
  const features = new Float32Array(items.length * dim);
  for (const [i, it] of items.entries()) features.set((await evalImage(it.abs, imgSize, cache && { cache, hash: it.hash })).data, i * dim);
  return { features, dim };
}

/** The raw-pixel baseline: the logistic probe on the RGB values at the model's input size, scored on the validation images. */
export function pixelBaseline(home: string, split: LabeledSplit, classes: number, imgSize: number, seed: number, cache: DecodeCache) {
  const rows = async (items: LabeledItem[]) => ({ ...(await pixelRows(items, imgSize, cache)), labels: items.map((t) => t.label) });
  return cachedTop1(home, cacheKey('pixels', String(imgSize), String(seed), splitKey(split)), async () => {
    const fit = await fitLinearProbe(await rows(split.train), classes, { seed });
    return probeTop1(fit.head, await rows(split.val));
  });
}

/**
 * The init baseline: the same fine-tuning from the backbone's initialisation (no pretraining), once per split, model,
 * seed and recipe (`key`). `run` trains it on the run's engine, its checkpoints in a temporary folder, removed after.
 * Its best validation top-1.
 */
export function initBaseline(
  home: string,
  key: string,
  run: (dir: string, onEvent: (e: TrainEvent) => void) => Promise<unknown>,
): Promise<number> {
  return cachedTop1(home, cacheKey('finetune-init', key), async () => {
    const dir = mkdtempSync(join(home, 'baseline-'));
    let best = 0;
    try {
      await run(dir, (e: TrainEvent) => {
        if (e.type === 'eval') best = Math.max(best, e.top1);
        if (e.type === 'checkpoint') rmSync(e.path, { force: true });
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    return best;
  });
}
