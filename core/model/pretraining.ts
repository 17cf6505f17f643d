import * as tf from '@tensorflow/tfjs';
import { modelDims, modelFamily, swinDims, type ModelConfig } from '../config.js';
import type { RgbImage } from '../image.js';
import { buffer, dense, range, uniform, type Linear, type ParamStore } from './module.js';

// What the training loop, checkpoints and previews need of a pretraining model, ViT (localmim.ts) or Swin
// (swin-localmim.ts), and the parts both build from: the HOG layers, the fusion of the taps, the masked loss.

export type ForwardOutput = {
  latents: tf.Tensor[];
  preds: tf.Tensor[];
  losses: tf.Scalar[];
  loss: tf.Scalar;
};

/** What every model's batch holds: its size and one target per scale or stage. */
export interface PretrainBatch {
  B: number;
  targets: tf.Tensor3D[];
}

/**
 * What the training loop, checkpoints and previews need of a pretraining model, ViT or Swin: its parameters, a batch
 * from images and mask noise, the forward pass and loss, and one output per scale or stage.
 */
export interface PretrainModel<Batch extends PretrainBatch = PretrainBatch> {
  readonly config: ModelConfig;
  readonly params: ParamStore;
  /** Per output: HOG cell or pixel patch, and features per location. */
  readonly cells: number[];
  readonly F: number[];
  /** Which parameters AdamW decays: as declared. */
  readonly decays: (name: string, shape: readonly number[]) => boolean;
  /** Per output: the target's `[locations, features]` for one image (see {@link targetShapes}). */
  targetShapes(): number[][];
  /** Length of the uniform noise `prepare` reads for B images. */
  noiseSize(B: number): number;
  prepare(images: RgbImage[], noise: Float32Array): Batch;
  forward(batch: Batch): ForwardOutput;
  /** The mask of each image over a grid of `g × g` squares of `p` pixels, 1 = removed. */
  pixelMask(batch: Batch): { mask: (b: number) => Float32Array; g: number; p: number };
  disposeBatch(batch: Batch): void;
  dispose(): void;
}

/** Per output of a config's pretraining model: the target's `[locations, features]` for one image. */
export function targetShapes(c: ModelConfig): number[][] {
  if (modelFamily(c) === 'swin') {
    const { predGrids, F } = swinDims(c);
    return predGrids.map((g, k) => [g * g, F[k]!]);
  }
  const { g, scales, F } = modelDims(c);
  return scales.map((s, k) => [(s * g) ** 2, F[k]!]);
}

const SOBEL = Float32Array.of(1, 0, -1, 2, 0, -2, 1, 0, -1, 1, 2, 1, 0, 0, 0, -1, -2, -1);

/**
 * The HOG layers' frozen tensors of n scales or stages: Sobel kernels, and with `hogBias` the official bias, PyTorch's
 * default conv init U(±1/3) (fan-in 9), frozen (docs/method.md#hog-bias).
 */
export const hogParams = (c: ModelConfig, n: number) =>
  range(c.target === 'hog' ? n : 0, () => ({
    conv: { weight: buffer([2, 1, 3, 3], () => SOBEL), bias: c.hogBias ? buffer([2], uniform(1 / 3)) : undefined },
  }));

/**
 * The fusion variant's features (docs/method.md#fusion): the last tap's normalised output plus each lower tap's through
 * its own Linear, as ConvMAE adds its projected stages to the top. latents: `[N, D]` each.
 */
export function fuse(m: Linear[], latents: tf.Tensor[]): tf.Tensor {
  return tf.addN([latents.at(-1)!, ...m.map((l, j) => dense(l, latents[j]!))]);
}

/** Σ M·mean_f (P − T)² / Σ M, over the whole batch, not per sample (docs/method.md#loss). */
export function maskedMse(pred: tf.Tensor, target: tf.Tensor, M: tf.Tensor): tf.Scalar {
  const perLocation = tf.mean(tf.squaredDifference(pred, target), -1); // [B, N]
  return tf.div(tf.sum(tf.mul(perLocation, M)), tf.sum(M));
}
