import * as tf from '@tensorflow/tfjs';
import { swinDims, type ModelConfig, type SwinDims } from '../config.js';
import { hog } from '../targets/hog.js';
import { normalize, toTensor, type RgbImage } from '../image.js';
import { pixelTargets } from '../targets/pixels.js';
import { scaleMask } from './masking.js';
import {
  ParamStore,
  buffer,
  declare,
  dense,
  linearParams,
  norm,
  normal,
  normParams,
  param,
  range,
  resolve,
  type Linear,
  type Tensors,
} from './module.js';
import { sinCosPosEmbed } from './posEmbed.js';
import { fuse, hogParams, maskedMse, targetShapes, type ForwardOutput, type PretrainModel } from './pretraining.js';
import {
  disposePlanTensors,
  gatherTokens,
  planTensors,
  swinBackboneParams,
  swinEncode,
  unitPatches,
  type SwinPlanTensors,
} from './swin.js';
import { swinPlan } from './swin-windows.js';
import { block, blockParams } from './vit.js';
import { predParams, rescale } from './decoder.js';

/** A batch on the device for Swin LocalMIM: one mask for the whole batch, as the official code. */
export interface SwinBatch {
  B: number;
  /** The mask over the mask grid `[units]`, raster, 1 = removed (predicted); the same for every image. */
  unitMask: Float32Array;
  plan: SwinPlanTensors;
  /** Visible patches, mask-unit-major `[B, N0, 3p²]`. */
  patches: tf.Tensor3D;
  /** Per stage: 1 where its output grid's token is masked `[1, L_i, 1]`; per decoder: the loss mask `[B, L_k]` and target `[B, L_k, F_k]` on its prediction grid. */
  removed: tf.Tensor3D[];
  stageMasks: tf.Tensor2D[];
  targets: tf.Tensor3D[];
}

/**
 * The official mask draw, `randperm(units) <= int(ratio · units)`, from uniform noise: the `nMasked` units of lowest
 * noise are removed. Returns the mask over the units, 1 = removed.
 */
export function swinMask(noise: Float32Array, d: SwinDims): Float32Array {
  const order = Array.from({ length: d.units }, (_, u) => u).sort((a, b) => noise[a]! - noise[b]! || a - b);
  const mask = new Float32Array(d.units);
  for (const u of order.slice(0, d.nMasked)) mask[u] = 1;
  return mask;
}

/**
 * Decoder k (official `ViT_Decoder`) on its tapped stage: its mask token is not decayed, as the official groups skip
 * every name with `token`. Its fixed positions are the sin-cos rows of the stage's output grid, without a class token.
 * At scale 1 (the official model) `pred` is one Linear; another scale rescales with the ViT decoders' head (`predParams`).
 */
function swinDecoderParams(c: ModelConfig, d: SwinDims, k: number) {
  const W = d.decoderDims[k]!;
  const t = d.reads[k]!;
  const g = d.outGrids[t]!;
  const s = d.scales[k]!;
  return {
    embed: linearParams(W, d.outWidths[t]!),
    mask_token: param([1, 1, W], normal(0.02), false),
    pos_embed: buffer([1, g * g, W], () => sinCosPosEmbed(W, g).subarray(W)),
    blocks: range(c.decoderDepth, () => blockParams(W, c.mlpRatio)),
    norm: normParams(W),
    pred: s === 1 ? linearParams(d.F[k]!, W) : predParams(s, W, d.F[k]!, c.variant === 'global'),
  };
}

/**
 * Swin LocalMIM's tensors (docs/method.md#swin), named as the official `MaskedAutoencoderSwin` without its `encoder.`
 * prefix: the backbone, one latent norm per tap and one decoder per tap (officially every stage), the HOG layers; the
 * fusion variant's `fuse.j`, each lower tap's `r × r` tokens of a mask unit to the last stage's width (docs/method.md#fusion).
 */
export function swinLocalMimParams(c: ModelConfig) {
  const d = swinDims(c);
  const top = d.outWidths.at(-1)!;
  const fused = c.variant === 'fusion' ? d.taps.slice(0, -1) : [];
  return declare({
    ...swinBackboneParams(d),
    norm: d.taps.map((t) => normParams(d.outWidths[t]!)),
    decoder: d.reads.map((_, k) => swinDecoderParams(c, d, k)),
    hog_enc: hogParams(c, d.reads.length),
    fuse: fused.map((t) => linearParams(top, (d.outGrids[t]! / d.maskGrid) ** 2 * d.outWidths[t]!)),
  });
}

/**
 * LocalMIM on a Swin backbone (docs/method.md#swin): each tapped stage's merged output → its own decoder → summed masked
 * losses; `global` decodes from the last stage only, `isolated` stops the gradients after each tap.
 */
export class SwinLocalMIM implements PretrainModel<SwinBatch> {
  readonly dims: SwinDims;
  readonly modules: ReturnType<typeof swinLocalMimParams>;
  readonly params: ParamStore;

  constructor(
    readonly config: ModelConfig,
    seed: number,
  ) {
    this.dims = swinDims(config);
    this.modules = swinLocalMimParams(config);
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

  /** One mask per batch: noise for the mask grid's units only. */
  noiseSize(): number {
    return this.dims.units;
  }

  prepare(images: RgbImage[], noise: Float32Array): SwinBatch {
    return this.prepareMasked(images, swinMask(noise, this.dims));
  }

  /** A batch under a given unit mask (1 = removed), e.g. the golden file's. */
  prepareMasked(images: RgbImage[], unitMask: Float32Array): SwinBatch {
    const d = this.dims;
    const B = images.length;
    const units = Int32Array.from(unitMask.keys()).filter((u) => !unitMask[u]);
    const plan = planTensors(d, swinPlan(d, units));
    const device = tf.tidy(() => {
      const x = toTensor(images);
      const normalized = normalize(x);
      const tiled = new Float32Array(B * d.units).map((_, i) => unitMask[i % d.units]!);
      return {
        patches: unitPatches(normalized, d, units),
        removed: d.outGrids.map((g, k) => {
          const r = plan.plan.restore[k]!;
          return tf.tensor3d(
            Float32Array.from(r, (t) => (t < 0 ? 1 : 0)),
            [1, g * g, 1],
          );
        }),
        stageMasks: d.predGrids.map((g) => tf.tensor2d(scaleMask(tiled, B, d.maskGrid, g / d.maskGrid), [B, g * g])),
        targets: this.targets(x, normalized),
      };
    });
    return { B, unitMask, plan, ...device };
  }

  /** Targets of images `[B, H, W, 3]` (0–255), one `[B, L_k, F_k]` per decoder: HOG cells or pixel patches of its predicted token's size. */
  private targets(x: tf.Tensor4D, normalized: tf.Tensor4D): tf.Tensor3D[] {
    const c = this.config;
    if (c.target === 'pixel') return this.dims.cells.map((cell) => pixelTargets(normalized, cell, c.normPix));
    const bias = c.hogBias ? this.modules.hog_enc.map((h) => this.params.get(h.conv.bias!.name)) : undefined;
    return hog(x, c.nbins, this.dims.cells, bias);
  }

  /** The whole forward pass and loss (docs/method.md#swin). Call inside `tf.tidy`. */
  forward(batch: SwinBatch): ForwardOutput {
    const m = resolve(this.modules, (name) => this.params.get(name));
    const d = this.dims;
    const isolate = this.config.variant === 'isolated' ? d.taps : undefined;
    const outputs = swinEncode(m, batch.patches, batch.plan, { isolate });
    const tapped = d.taps.map((t, k) => norm(m.norm[k]!, outputs[t]!));
    const latents = this.config.variant === 'fusion' ? [fused(m.fuse, tapped)] : tapped;
    const preds = latents.map((z, k) => this.decode(m.decoder[k]!, k, z, batch));
    const losses = preds.map((pred, k) => maskedMse(pred, batch.targets[k]!, batch.stageMasks[k]!));
    return { latents, preds, losses, loss: tf.addN(losses) as tf.Scalar };
  }

  /**
   * Decoder k (official `ViT_Decoder`) on its latent `[B, n, C]` from stage t: embedded, put back in raster order over
   * the stage's output grid with mask tokens in the gaps, fixed sin-cos positions, blocks, norm, then the Linear (or
   * the rescaling head): `[B, L_k, F_k]`.
   */
  private decode(m: Tensors<ReturnType<typeof swinDecoderParams>>, k: number, latent: tf.Tensor, batch: SwinBatch): tf.Tensor {
    const [B, n, C] = latent.shape as [number, number, number];
    const W = this.dims.decoderDims[k]!;
    const t = this.dims.reads[k]!;
    const g = this.dims.outGrids[t]!;
    const x = tf.reshape(dense(m.embed, tf.reshape(latent, [B * n, C])), [B, n, W]);
    const { order, slots } = batch.plan.restore[t]!;
    const full = tf.add(gatherTokens(x, order, slots), tf.mul(batch.removed[t]!, m.mask_token)); // [B, L, W]
    let h: tf.Tensor = tf.reshape(tf.add(full, m.pos_embed), [B * g * g, W]);
    for (const blk of m.blocks) h = block(blk, h, { B, T: g * g }, { heads: this.config.decoderHeads });
    h = norm(m.norm, h);
    if (!Array.isArray(m.pred)) return tf.reshape(dense(m.pred, h), [B, g * g, -1]);
    const out = rescale(m.pred, tf.reshape(h, [B, g, g, W]));
    return tf.reshape(out, [B, -1, out.shape[3]!]);
  }

  /** The mask of image b on a grid of `g × g` squares of `p` pixels (for previews). */
  pixelMask(batch: SwinBatch): { mask: (b: number) => Float32Array; g: number; p: number } {
    return { mask: () => batch.unitMask, g: this.dims.maskGrid, p: this.config.imgSize / this.dims.maskGrid };
  }

  disposeBatch(b: SwinBatch): void {
    disposePlanTensors(b.plan);
    tf.dispose([b.patches, ...b.removed, ...b.stageMasks, ...b.targets]);
  }

  dispose(): void {
    this.params.dispose();
  }
}

/**
 * The fusion variant's features `[B, n, C_last]` (docs/method.md#fusion): a lower tap's `r × r` tokens of a mask unit
 * are consecutive (mask-unit-major), so one row of `[B·n, r²·C_t]` each, through `fuse` as a ViT's: ConvMAE's
 * strided-conv stage projections, on the visible units only.
 */
function fused(m: Linear[], latents: tf.Tensor[]): tf.Tensor {
  const [B, n, C] = latents.at(-1)!.shape as [number, number, number];
  return tf.reshape(
    fuse(
      m,
      latents.map((x) => tf.reshape(x, [B * n, -1])),
    ),
    [B, n, C],
  );
}
