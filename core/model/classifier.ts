import * as tf from '@tensorflow/tfjs';
import { modelDims, type ModelConfig, type ModelDims } from '../config.js';
import type { Rng } from '../random.js';
import type { RgbImage } from '../targets/image.js';
import { layerNorm, linear } from './ops.js';
import { ParamStore } from './params.js';
import { patchRows } from './patches.js';
import { encode, meanPatchTokens, type EncoderOptions, type Param } from './vit.js';

/**
 * The encoder on all patches of full images at the model's input size (features, attention, fine-tuning). Positions
 * come from the model's `pos_embed [1, 1+L, D]` on the device, so a trainable table gets its gradient, and its class
 * row is added to the class token, as timm's ViT (zero in a pretrained table). Call in `tf.tidy`.
 */
export function encodeImages(P: Param, dims: ModelDims, images: RgbImage[], o: EncoderOptions = {}) {
  const { D, p, L } = dims;
  const B = images.length;
  const all = Int32Array.from({ length: L }, (_, i) => i);
  const patches = tf.tensor2d(
    patchRows(images, () => all, p),
    [B * L, 3 * p * p],
  );
  const table = P('pos_embed');
  const pos = tf.reshape(tf.broadcastTo(tf.slice(table, [0, 1, 0], [1, L, D]), [B, L, D]), [B * L, D]);
  const cls = tf.add(P('cls_token'), tf.slice(table, [0, 0, 0], [1, 1, D]));
  return encode((name) => (name === 'cls_token' ? cls : P(name)), dims, patches, pos, B, o);
}

/**
 * The backbone's feature of each image: the mean of its patch tokens after the last block (class token
 * excluded, no norm). Returns `[B, D]`; call in `tf.tidy`.
 */
export function backboneFeatures(P: Param, dims: ModelDims, images: RgbImage[], dropPath?: { rate: number; rng: Rng }): tf.Tensor {
  return meanPatchTokens(encodeImages(P, dims, images, { dropPath }).x, images.length);
}

/**
 * The fine-tuning model (docs/method.md#fine-tuning): the pretrained backbone with a trainable `pos_embed`, mean-pooled
 * patch tokens, `fc_norm`, `head`.
 */
export class ViTClassifier {
  readonly dims: ModelDims;
  readonly params: ParamStore;

  constructor(
    readonly config: ModelConfig,
    readonly classes: number,
    seed: number,
  ) {
    this.dims = modelDims(config);
    this.params = new ParamStore(config, seed, classes);
  }

  readonly P = (name: string) => this.params.get(name);

  /** Class scores `[B, classes]`; with `dropPath` (training), stochastic depth. Call in `tf.tidy`. */
  logits(images: RgbImage[], dropPath?: { rate: number; rng: Rng }): tf.Tensor {
    const f = backboneFeatures(this.P, this.dims, images, dropPath);
    return linear(layerNorm(f, this.P('fc_norm.weight'), this.P('fc_norm.bias')), this.P('head.weight'), this.P('head.bias'));
  }

  dispose(): void {
    this.params.dispose();
  }
}

/** Names of the backbone's tensors: what a fine-tuning run takes from a pretraining checkpoint, and what export keeps. */
export const isBackbone = (name: string) =>
  name === 'cls_token' || name === 'pos_embed' || name.startsWith('patch_embed.') || name.startsWith('blocks.');
