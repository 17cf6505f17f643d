import * as tf from '@tensorflow/tfjs';
import { modelDims, type ModelConfig, type ModelDims } from '../config.js';
import type { Rng } from '../random.js';
import { normalize, toTensor, type RgbImage } from '../targets/image.js';
import { batchNorm, layerNorm, linear } from './ops.js';
import { ParamStore } from './params.js';
import { allPatches } from './patches.js';
import { encode, meanPatchTokens, type EncoderOptions, type Param } from './vit.js';

/**
 * The encoder on all patches of full images at the model's input size (features, attention, fine-tuning). Positions
 * come from the model's `pos_embed [1, 1+L, D]` on the device, so a trainable table gets its gradient, and its class
 * row is added to the class token, as timm's ViT (zero in a pretrained table). Call in `tf.tidy`.
 */
export function encodeImages(P: Param, dims: ModelDims, images: RgbImage[], o: EncoderOptions = {}) {
  const table = P('pos_embed');
  const { patches, pos } = allPatches(normalize(toTensor(images)), dims.p, table);
  const cls = tf.add(P('cls_token'), tf.slice(table, [0, 0, 0], [1, 1, dims.D]));
  return encode((name) => (name === 'cls_token' ? cls : P(name)), dims, patches, pos, images.length, o);
}

/**
 * The backbone's feature of each image: the mean of its patch tokens after the last block (class token
 * excluded, no norm). Returns `[B, D]`; call in `tf.tidy`.
 */
export function backboneFeatures(P: Param, dims: ModelDims, images: RgbImage[], dropPath?: { rate: number; rng: Rng }): tf.Tensor {
  return meanPatchTokens(encodeImages(P, dims, images, { dropPath }).x, images.length);
}

/** MAE's probe BatchNorm eps (main_linprobe.py). */
export const PROBE_EPS = 1e-6;

/**
 * The fine-tuning model (docs/method.md#fine-tuning): the pretrained backbone with a trainable `pos_embed`, mean-pooled
 * patch tokens, `fc_norm`, `head`. With `probe`, MAE's linear probe (docs/method.md#linear-probe): `fc_norm` stays as
 * initialised, then `head.0` (BatchNorm without affine) and the Linear `head.1`.
 */
export class ViTClassifier {
  readonly dims: ModelDims;
  readonly params: ParamStore;

  constructor(
    readonly config: ModelConfig,
    readonly classes: number,
    seed: number,
    readonly probe = false,
  ) {
    this.dims = modelDims(config);
    this.params = new ParamStore(config, seed, { classes, probe });
  }

  readonly P = (name: string) => this.params.get(name);

  /**
   * The head's input `[B, D]`. `train` (training): stochastic depth when given a rate, and a probe's BatchNorm on the
   * batch's statistics, moving its running ones. Call in `tf.tidy`.
   */
  headInput(images: RgbImage[], train?: { dropPath?: { rate: number; rng: Rng } }): tf.Tensor {
    const f = backboneFeatures(this.P, this.dims, images, train?.dropPath);
    const x = layerNorm(f, this.P('fc_norm.weight'), this.P('fc_norm.bias'));
    if (!this.probe) return x;
    const stat = (name: string) => this.params.stats.get(`head.0.${name}`)!;
    return batchNorm(x, { mean: stat('running_mean'), variance: stat('running_var') }, train !== undefined, PROBE_EPS);
  }

  /** Class scores `[B, classes]` of the head's input. */
  head(x: tf.Tensor): tf.Tensor {
    const at = this.probe ? 'head.1' : 'head';
    return linear(x, this.P(`${at}.weight`), this.P(`${at}.bias`));
  }

  /** Class scores `[B, classes]` of images (evaluation unless `train`). Call in `tf.tidy`. */
  logits(images: RgbImage[], train?: { dropPath?: { rate: number; rng: Rng } }): tf.Tensor {
    return this.head(this.headInput(images, train));
  }

  dispose(): void {
    this.params.dispose();
  }
}

/** Names of the backbone's tensors: what a fine-tuning run takes from a pretraining checkpoint, and what export keeps. */
export const isBackbone = (name: string) =>
  name === 'cls_token' ||
  name === 'pos_embed' ||
  name.startsWith('patch_embed.') ||
  name.startsWith('blocks.') ||
  name.startsWith('layers.');
