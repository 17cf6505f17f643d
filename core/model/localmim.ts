import * as tf from '@tensorflow/tfjs';
import { modelDims, type ModelConfig, type ModelDims } from '../config.js';
import { hog } from '../targets/hog.js';
import { normalize, toTensor, type RgbImage } from '../image.js';
import { pixelTargets } from '../targets/pixels.js';
import { decode, decoderParams } from './decoder.js';
import { randomMasking, scaleMask } from './masking.js';
import { ParamStore, declare, linearParams, range, resolve } from './module.js';
import { visiblePatches } from './patches.js';
import { fuse, hogParams, maskedMse, targetShapes, type ForwardOutput, type PretrainModel } from './pretraining.js';
import { encode, encoderParams } from './vit.js';

/**
 * A batch on the device, ready for the forward pass: the images are uploaded once and patches, positions and
 * targets are cut from them there; only the mask (drawn on the host from its seed) comes with them.
 */
export interface PreparedBatch {
  B: number;
  /** Host copies of the mask: `idsKeep [B, nKeep]` (noise order) and `mask [B, L]`, 1 = removed (predicted), 0 = visible. */
  idsKeep: Int32Array;
  mask: Float32Array;
  /** Visible patches `[B·nKeep, 3p²]` in noise order, flattened `(c, dy, dx)`, normalised; their positions `[B·nKeep, D]`. */
  patches: tf.Tensor2D;
  pos: tf.Tensor2D;
  /** Where the class and visible tokens go back in the decoders' sequence: one-hot `[B, 1+L, 1+nKeep]`, mask `[B, 1+L, 1]`. */
  select: tf.Tensor3D;
  removed: tf.Tensor3D;
  /** Per scale: target `[B, N_k, F_k]` and the mask resampled to the scale's grid `[B, N_k]`. */
  targets: tf.Tensor3D[];
  scaleMasks: tf.Tensor2D[];
}

/** Frees a batch's tensors. */
export function disposeBatch(b: PreparedBatch): void {
  tf.dispose([b.patches, b.pos, b.select, b.removed, ...b.targets, ...b.scaleMasks]);
}

/**
 * The pretraining model's tensors (docs/method.md#parameter-names): the encoder with its latent norms, decoders, HOG
 * layers; the fusion variant's projections `fuse.j` of the lower taps (docs/method.md#fusion).
 */
export function localMimParams(c: ModelConfig) {
  const d = modelDims(c);
  return declare({
    ...encoderParams(d, { taps: d.taps.length }),
    decoder: d.scales.map((_, k) => decoderParams(c, d, k)),
    hog_enc: hogParams(c, d.scales.length),
    fuse: range(c.variant === 'fusion' ? d.taps.length - 1 : 0, () => linearParams(d.D, d.D)),
  });
}

/** LocalMIM (and its `global`/`isolated`/`fusion` variants): encoder taps → per-scale decoders → summed masked losses. */
export class LocalMIM implements PretrainModel<PreparedBatch> {
  readonly dims: ModelDims;
  readonly modules: ReturnType<typeof localMimParams>;
  readonly params: ParamStore;

  constructor(
    readonly config: ModelConfig,
    seed: number,
  ) {
    this.dims = modelDims(config);
    this.modules = localMimParams(config);
    this.params = new ParamStore(this.modules, seed);
  }

  get decays() {
    return this.params.decays;
  }

  get cells() {
    return this.dims.cells;
  }

  get F() {
    return this.dims.F;
  }

  targetShapes(): number[][] {
    return targetShapes(this.config);
  }

  /** Per-sample masks: noise `[B, L]`. */
  noiseSize(B: number): number {
    return B * this.dims.L;
  }

  pixelMask(batch: PreparedBatch): { mask: (b: number) => Float32Array; g: number; p: number } {
    const { g, p, L } = this.dims;
    return { mask: (b) => batch.mask.subarray(b * L, (b + 1) * L), g, p };
  }

  disposeBatch(batch: PreparedBatch): void {
    disposeBatch(batch);
  }

  /** Masks, patches and targets of a batch of `imgSize²` images; `noise [B, L]` decides the mask (docs/method.md#masking). */
  prepare(images: RgbImage[], noise: Float32Array): PreparedBatch {
    const { p, g, L, nKeep, scales } = this.dims;
    const B = images.length;
    const masking = randomMasking(noise, B, L, nKeep);
    const device = tf.tidy(() => {
      const x = toTensor(images);
      const normalized = normalize(x);
      return {
        ...visiblePatches(normalized, p, this.params.get(this.modules.pos_embed.name), masking.idsKeep),
        ...unshuffle(masking, this.dims),
        targets: this.targets(x, normalized),
        scaleMasks: scales.map((s) => tf.tensor2d(scaleMask(masking.mask, B, g, s), [B, (s * g) ** 2])),
      };
    });
    return { B, ...masking, ...device };
  }

  /** Targets of images `[B, H, W, 3]` (0–255), one `[B, N_k, F_k]` per scale (docs/method.md#targets). */
  private targets(x: tf.Tensor4D, normalized: tf.Tensor4D): tf.Tensor3D[] {
    const c = this.config;
    const { cells } = this.dims;
    if (c.target === 'pixel') return cells.map((cell) => pixelTargets(normalized, cell, c.normPix));
    // The frozen Sobel offsets of each scale (`--hog_bias`).
    const bias = c.hogBias ? this.modules.hog_enc.map((h) => this.params.get(h.conv.bias!.name)) : undefined;
    return hog(x, c.nbins, cells, bias);
  }

  /** The whole forward pass and loss (docs/method.md#loss). Call inside `tf.tidy`. */
  forward(batch: PreparedBatch): ForwardOutput {
    const m = resolve(this.modules, (name) => this.params.get(name));
    const isolate = this.config.variant === 'isolated';
    const tapped = encode(m, batch, this.dims.heads, { taps: this.dims.taps, isolate }).latents;
    const latents = this.config.variant === 'fusion' ? [fuse(m.fuse, tapped)] : tapped;
    const un = { select: batch.select, mask: batch.removed };
    const preds = latents.map((z, k) => decode(m.decoder[k]!, z, un, this.config.decoderHeads));
    const losses = preds.map((pred, k) => maskedMse(pred, batch.targets[k]!, batch.scaleMasks[k]!));
    return { latents, preds, losses, loss: tf.addN(losses) as tf.Scalar };
  }

  dispose(): void {
    this.params.dispose();
  }
}

/** The decoders' un-shuffle (see `Unshuffle`): sample b's row 1+n takes visible token 1+k when idsKeep[b, k] = n. */
function unshuffle({ idsKeep, mask }: { idsKeep: Int32Array; mask: Float32Array }, { L, nKeep }: ModelDims) {
  const B = mask.length / L;
  const [T, n] = [1 + L, 1 + nKeep];
  const select = new Float32Array(B * T * n);
  const removed = new Float32Array(B * T);
  for (let b = 0; b < B; b++) {
    select[b * T * n] = 1;
    for (let k = 0; k < nKeep; k++) select[(b * T + 1 + idsKeep[b * nKeep + k]!) * n + 1 + k] = 1;
    removed.set(mask.subarray(b * L, (b + 1) * L), b * T + 1);
  }
  return { select: tf.tensor3d(select, [B, T, n]), removed: tf.tensor3d(removed, [B, T, 1]) };
}
