import * as tf from '@tensorflow/tfjs';
import { modelDims, type ModelConfig, type ModelDims } from '../config.js';
import { hog, type HogBias } from '../targets/hog.js';
import type { RgbImage } from '../targets/image.js';
import { pixelTargets } from '../targets/pixels.js';
import { decode } from './decoder.js';
import { randomMasking, scaleMask } from './masking.js';
import { ParamStore } from './params.js';
import { gatherPatches } from './patches.js';
import { encode } from './vit.js';

/** A batch made ready on the host: everything that needs no gradient is gathered here, not in tfjs. */
export interface PreparedBatch {
  B: number;
  /** Visible patches `[B·nKeep, 3p²]` in noise order, flattened `(c, dy, dx)`, normalised. */
  patches: Float32Array;
  /** Their fixed positions `[B·nKeep, D]`. */
  pos: Float32Array;
  idsKeep: Int32Array;
  /** mask [B, L]: 1 = removed (predicted), 0 = visible. */
  mask: Float32Array;
  /** Per scale: target `[B, N_k, F_k]` and mask resampled to the scale's grid `[B, N_k]`. */
  targets: Float32Array[];
  scaleMasks: Float32Array[];
}

export type ForwardOutput = {
  latents: tf.Tensor[];
  preds: tf.Tensor[];
  losses: tf.Scalar[];
  loss: tf.Scalar;
};

/** LocalMIM (and its `global`/`isolated` variants): encoder taps → per-scale decoders → summed masked losses. */
export class LocalMIM {
  readonly dims: ModelDims;
  readonly params: ParamStore;

  constructor(
    readonly config: ModelConfig,
    seed: number,
  ) {
    this.dims = modelDims(config);
    this.params = new ParamStore(config, seed);
  }

  /** Masks, patches and targets of a batch of `imgSize²` images; `noise [B, L]` decides the mask (docs/method.md#masking). */
  prepare(images: RgbImage[], noise: Float32Array): PreparedBatch {
    const { D, p, g, L, nKeep, cells, scales } = this.dims;
    const B = images.length;
    const { idsKeep, mask } = randomMasking(noise, B, L, nKeep);
    const { patches, pos } = gatherPatches(images, (b) => idsKeep.subarray(b * nKeep, (b + 1) * nKeep), p, this.posTable(), D);
    const bias = this.hogBias();
    const perImage = images.map((img) => this.targetsOf(img, bias));
    const targets = cells.map((_, k) => concat(perImage.map((t) => t[k]!)));
    const scaleMasks = scales.map((s) => scaleMask(mask, B, g, s));
    return { B, patches, pos, idsKeep, mask, targets, scaleMasks };
  }

  /** The encoder's positions `[1 + L, D]`: sin-cos unless weights were imported with their own. */
  posTable(): Float32Array {
    return this.params.hostValues('pos_embed');
  }

  /** Targets of one image, one `[N_k, F_k]` array per scale (docs/method.md#targets). */
  private targetsOf(img: RgbImage, bias: HogBias[] | undefined): Float32Array[] {
    const c = this.config;
    if (c.target === 'pixel') return this.dims.cells.map((cell) => pixelTargets(img, cell, c.normPix));
    return hog(img, c.nbins, this.dims.cells, bias);
  }

  /** The frozen Sobel offsets of each scale (`--hog_bias`), read once per batch. */
  private hogBias(): HogBias[] | undefined {
    if (!this.config.hogBias) return undefined;
    return this.dims.scales.map((_, k) => Array.from(this.params.hostValues(`hog_enc.${k}.conv.bias`)) as unknown as HogBias);
  }

  /** The whole forward pass and loss (docs/method.md#loss). Call inside `tf.tidy`. */
  forward(batch: PreparedBatch): ForwardOutput {
    const { D, p, L, nKeep, F } = this.dims;
    const { B } = batch;
    const P = (name: string) => this.params.get(name);
    const patches = tf.tensor2d(batch.patches, [B * nKeep, 3 * p * p]);
    const pos = tf.tensor2d(batch.pos, [B * nKeep, D]);
    const { latents } = encode(P, this.dims, patches, pos, B, { taps: this.dims.taps, isolate: this.config.variant === 'isolated' });
    const un = { select: tf.tensor3d(selection(batch.idsKeep, B, L, nKeep), [B, L, nKeep]), mask: tf.tensor3d(batch.mask, [B, L, 1]) };
    const preds = latents.map((z, k) => decode(P, k, this.config, this.dims, z, un, B));
    const losses = preds.map((pred, k) => {
      const N = batch.scaleMasks[k]!.length / B;
      const target = tf.tensor3d(batch.targets[k]!, [B, N, F[k]!]);
      return maskedMse(pred, target, batch.scaleMasks[k]!, [B, N]);
    });
    return { latents, preds, losses, loss: tf.addN(losses) as tf.Scalar };
  }

  dispose(): void {
    this.params.dispose();
  }
}

/** Σ M·mean_f (P − T)² / Σ M, over the whole batch, not per sample (docs/method.md#loss). */
function maskedMse(pred: tf.Tensor, target: tf.Tensor, M: Float32Array, shape: [number, number]): tf.Scalar {
  const total = M.reduce((a, b) => a + b, 0);
  const perLocation = tf.mean(tf.squaredDifference(pred, target), -1); // [B, N]
  return tf.div(tf.sum(tf.mul(perLocation, tf.tensor2d(M, shape))), total);
}

/** One-hot `[B, L, nKeep]`: patch n of sample b takes visible token k when idsKeep[b, k] = n. */
function selection(idsKeep: Int32Array, B: number, L: number, nKeep: number): Float32Array {
  const S = new Float32Array(B * L * nKeep);
  for (let b = 0; b < B; b++) for (let k = 0; k < nKeep; k++) S[(b * L + idsKeep[b * nKeep + k]!) * nKeep + k] = 1;
  return S;
}

function concat(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, a) => n + a.length, 0));
  let at = 0;
  for (const a of parts) {
    out.set(a, at);
    at += a.length;
  }
  return out;
}
