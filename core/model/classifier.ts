import * as tf from '@tensorflow/tfjs';
import { modelDims, type ModelConfig, type ModelDims } from '../config.js';
import type { Rng } from '../random.js';
import { normalize, toTensor, type RgbImage } from '../targets/image.js';
import { layerNorm, linear } from './ops.js';
import { ParamStore } from './params.js';
import { allPatches } from './patches.js';
import { encode, meanPatchTokens, type Param } from './vit.js';

/**
 * The backbone's feature of each image: the mean of its patch tokens after the last block (class token
 * excluded, no norm), on all patches. Images must be at the model's input size. Returns `[B, D]`; call in `tf.tidy`.
 */
export function backboneFeatures(P: Param, dims: ModelDims, images: RgbImage[], dropPath?: { rate: number; rng: Rng }): tf.Tensor {
  const { patches, pos } = allPatches(normalize(toTensor(images)), dims.p, P('pos_embed'));
  const { x } = encode(P, dims, patches, pos, images.length, { dropPath });
  return meanPatchTokens(x, images.length);
}

/** The fine-tuning model (docs/method.md#fine-tuning): the pretrained backbone, mean-pooled patch tokens, `fc_norm`, `head`. */
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
