import { modelDims, type ModelConfig, type ModelDims } from '../config.js';
import type { PretrainModel } from '../model/pretraining.js';
import type { Param } from '../model/module.js';
import { Rng, seedFor } from '../random.js';
import type { RunRow } from '../store/store.js';
import type { RgbImage } from '../image.js';
import type { LoadedCheckpoint } from '../train/checkpoint.js';
import { layerStats, visitAttention } from './attention.js';
import { blockGradientNorms, blockPrefixes, lossModelOf } from './gradients.js';

/**
 * One statistic over a set of images: mean ± sample standard deviation (n − 1; 0 for one image), and the five-number
 * summary, quartiles interpolated linearly between order statistics (numpy's default). `values` are per image, in the
 * order of the set, so that two runs on the same images can be compared image by image.
 */
export interface Spread {
  mean: number;
  std: number;
  min: number;
  q1: number;
  median: number;
  q3: number;
  max: number;
  values: number[];
}

export function spread(values: number[]): Spread {
  if (!values.length) throw new Error('spread: no values');
  const n = values.length;
  const mean = values.reduce((a, b) => a + b, 0) / n;
  const std = n > 1 ? Math.sqrt(values.reduce((s, v) => s + (v - mean) ** 2, 0) / (n - 1)) : 0;
  const sorted = [...values].sort((a, b) => a - b);
  const quantile = (q: number) => {
    const at = q * (n - 1);
    const lo = Math.floor(at);
    return sorted[lo]! + (at - lo) * (sorted[Math.min(lo + 1, n - 1)]! - sorted[lo]!);
  };
  return { mean, std, min: sorted[0]!, q1: quantile(0.25), median: quantile(0.5), q3: quantile(0.75), max: sorted[n - 1]!, values };
}

/**
 * `n` of the items, chosen by a seeded shuffle and returned in their given order (the same seed and items give the
 * same choice, whatever run is analysed). All of them when there are no more than `n`.
 */
export function chooseImages<T>(items: readonly T[], n: number, seed: number): T[] {
  if (!Number.isInteger(n) || n < 1) throw new Error(`images: expected a positive integer, got ${n}`);
  if (n >= items.length) return [...items];
  const order = Array.from(items, (_, i) => i);
  const rng = new Rng(seed);
  // Partial Fisher–Yates: the first n places are a uniform choice.
  for (let i = 0; i < n; i++) {
    const j = i + Math.floor(rng.next() * (order.length - i));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  return order
    .slice(0, n)
    .sort((a, b) => a - b)
    .map((i) => items[i]!);
}

export interface LayerSpread {
  block: number;
  /** Per image, the mean over heads (as the per-image analysis); then over the images. */
  nmi: Spread;
  kl: Spread;
}

/** Memory the encoder's activations and attention may take per pass, on the device. */
const PASS_BYTES = 1 << 30;

/**
 * Images per encoder pass. Everything one image computes stays alive until the pass's tidy ends: about
 * `depth · (6·H·T² + 250·T·D)` floats, fitted to tf.memory() on vit-tiny and vit-small at 64 and 128 px (the MLP's
 * GELU and the norms dominate).
 */
export function imagesPerPass({ depth, heads, L, D }: ModelDims): number {
  const T = 1 + L;
  return Math.max(1, Math.floor(PASS_BYTES / (4 * depth * (6 * heads * T * T + 250 * T * D))));
}

/** NMI and KL of every block (paper Figs. 3 and 6) over a set of images, encoded `perPass` images at a time. */
export async function attentionOverSet(
  P: Param,
  model: ModelConfig,
  images: RgbImage[],
  perPass?: number,
  onImages?: (done: number) => void,
): Promise<LayerSpread[]> {
  const dims = modelDims(model);
  const step = perPass ?? imagesPerPass(dims);
  // [block][image]
  const nmi = Array.from({ length: dims.depth }, () => new Array<number>(images.length));
  const kl = Array.from({ length: dims.depth }, () => new Array<number>(images.length));
  for (let start = 0; start < images.length; start += step) {
    await visitAttention(P, dims, images.slice(start, start + step), (i, block, perHead) => {
      const s = layerStats(perHead, dims.L);
      nmi[block]![start + i] = s.nmi;
      kl[block]![start + i] = s.kl;
    });
    onImages?.(Math.min(start + step, images.length));
  }
  return nmi.map((values, block) => ({ block, nmi: spread(values), kl: spread(kl[block]!) }));
}

/**
 * Per block, the norm of the pretraining loss's gradient (paper Fig. 5) over a set of images: each image on its own
 * (a spread needs one value per image), with its own mask from `seedFor(seed, i)`.
 */
export async function gradientNormsOverSet(
  model: PretrainModel,
  images: RgbImage[],
  seed: number,
  onImages?: (done: number) => void,
): Promise<Spread[]> {
  const perImage: number[][] = [];
  for (const [i, img] of images.entries()) {
    perImage.push(await blockGradientNorms(model, [img], seedFor(seed, i)));
    onImages?.(i + 1);
  }
  return blockPrefixes(model.config).map((_, block) => spread(perImage.map((g) => g[block]!)));
}

export interface SetAnalysis {
  layers: LayerSpread[];
  /** Per block; null unless the run is a pretraining run (the loss needs its decoders). */
  gradNorms: Spread[] | null;
}

/**
 * The attention statistics of a backbone `P` over the images and, when `source` is a pretraining run (the loss needs
 * its decoders), the gradient norms. `onProgress` counts images through each of the two passes.
 */
export async function analyzeSet(
  P: Param,
  model: ModelConfig,
  images: RgbImage[],
  seed: number,
  source: { run: RunRow; checkpoint: LoadedCheckpoint },
  onProgress?: (done: number, total: number) => void,
): Promise<SetAnalysis> {
  const grads = source.run.kind === 'pretrain';
  const total = images.length * (grads ? 2 : 1);
  const layers = await attentionOverSet(P, model, images, undefined, (done) => onProgress?.(done, total));
  if (!grads) return { layers, gradNorms: null };
  const lossModel = lossModelOf(source.run, source.checkpoint);
  try {
    return { layers, gradNorms: await gradientNormsOverSet(lossModel, images, seed, (done) => onProgress?.(images.length + done, total)) };
  } finally {
    lossModel.dispose();
  }
}
