import * as tf from '@tensorflow/tfjs';
import { modelDims, modelFamily, swinDims, type ModelConfig, type ModelDims, type SwinDims } from '../config.js';
import type { Rng } from '../random.js';
import { normalize, toTensor, type RgbImage } from '../image.js';
import {
  ParamStore,
  declare,
  dense,
  fill,
  linearParams,
  norm,
  normal,
  normParams,
  resolve,
  running,
  type Param,
  type ParamSpec,
} from './module.js';
import { batchNorm } from './ops.js';
import { allPatches } from './patches.js';
import {
  disposePlanTensors,
  planTensors,
  swinBackboneParams,
  swinEncode,
  unitPatches,
  type SwinEncoderOptions,
  type SwinPlanTensors,
} from './swin.js';
import { swinPlan } from './swin-windows.js';
import { encode, encoderParams, meanPatchTokens, type EncoderOptions } from './vit.js';

/**
 * The encoder on all patches of full images at the model's input size (features, attention, fine-tuning). Positions
 * come from the model's `pos_embed [1, 1+L, D]` on the device, so a trainable table gets its gradient, and its class
 * row is added to the class token, as timm's ViT (zero in a pretrained table). Call in `tf.tidy`.
 */
export function encodeImages(P: Param, dims: ModelDims, images: RgbImage[], o: EncoderOptions = {}) {
  const m = resolve(declare(encoderParams(dims)), P);
  const input = { B: images.length, ...allPatches(normalize(toTensor(images)), dims.p, m.pos_embed) };
  const cls = tf.add(m.cls_token, tf.slice(m.pos_embed, [0, 0, 0], [1, 1, dims.D]));
  return encode({ ...m, cls_token: cls }, input, dims.heads, o);
}

/**
 * The backbone's feature of each image: the mean of its patch tokens after the last block (class token
 * excluded, no norm). Returns `[B, D]`; call in `tf.tidy`.
 */
export function backboneFeatures(P: Param, dims: ModelDims, images: RgbImage[], dropPath?: { rate: number; rng: Rng }): tf.Tensor {
  return meanPatchTokens(encodeImages(P, dims, images, { dropPath }).blocks.at(-1)!, images.length);
}

/** MAE's probe BatchNorm eps (main_linprobe.py). */
export const PROBE_EPS = 1e-6;

/** What fine-tuning needs of a classifier, ViT or Swin. */
export interface Classifier {
  readonly config: ModelConfig;
  readonly classes: number;
  readonly probe: boolean;
  readonly params: ParamStore;
  headInput(images: RgbImage[], train?: { dropPath?: { rate: number; rng: Rng } }): tf.Tensor;
  head(x: tf.Tensor): tf.Tensor;
  logits(images: RgbImage[], train?: { dropPath?: { rate: number; rng: Rng } }): tf.Tensor;
  /** The official layer-wise lr decay's factor for a parameter. */
  lrScale(name: string, layerDecay: number): number;
  /** Whether AdamW decays a parameter, as the official fine-tuning's groups: as declared. */
  decays(name: string, shape: readonly number[]): boolean;
  dispose(): void;
}

/** The fine-tuning classifier of a model config's family. */
export function classifierFor(config: ModelConfig, head: HeadSpec, seed: number): Classifier {
  return modelFamily(config) === 'swin' ? new SwinClassifier(config, head, seed) : new ViTClassifier(config, head, seed);
}

/**
 * The classifier's head: `classes` outputs, and MAE's linear-probe head (BatchNorm, then the Linear) when `probe`.
 * `scratch`: no pretrained weights are loaded, so the head keeps timm's init.
 */
export interface HeadSpec {
  classes: number;
  probe?: boolean;
  scratch?: boolean;
}

/**
 * The std of a new head's weight: the official fine-tuning re-initialises it at 2e-5 only when it loads weights
 * (`if args.finetune`); from scratch it keeps timm's `_init_weights`, std 0.02.
 */
export const headStd = (scratch = false) => (scratch ? 0.02 : 2e-5);

/**
 * The ViT fine-tuning model's tensors (docs/method.md#fine-tuning): the backbone with trained positions, `fc_norm` and
 * `head`, the new head at std {@link headStd}. With `probe`, MAE's linear probe
 * (docs/method.md#linear-probe): `head.0` (BatchNorm without affine: running statistics only) and `head.1` (std 0.01).
 */
export function vitClassifierParams(c: ModelConfig, head: HeadSpec) {
  const d = modelDims(c);
  const { D } = d;
  const stats = { running_mean: running([D], fill(0)), running_var: running([D], fill(1)) };
  return declare({
    ...encoderParams(d, { finetune: true }),
    fc_norm: normParams(D),
    head: head.probe
      ? { 0: stats, 1: linearParams(head.classes, D, normal(0.01)) }
      : linearParams(head.classes, D, normal(headStd(head.scratch))),
  });
}

/**
 * The fine-tuning model: the pretrained backbone with a trainable `pos_embed`, mean-pooled patch tokens, `fc_norm`,
 * `head`; or MAE's linear probe, whose `fc_norm` stays as initialised.
 */
export class ViTClassifier implements Classifier {
  readonly dims: ModelDims;
  readonly modules: ReturnType<typeof vitClassifierParams>;
  readonly params: ParamStore;
  readonly classes: number;
  readonly probe: boolean;

  constructor(
    readonly config: ModelConfig,
    head: HeadSpec,
    seed: number,
  ) {
    this.classes = head.classes;
    this.probe = head.probe ?? false;
    this.dims = modelDims(config);
    this.modules = vitClassifierParams(config, head);
    this.params = new ParamStore(this.modules, seed);
  }

  readonly P = (name: string) => this.params.get(name);

  /**
   * The head's input `[B, D]`. `train` (training): stochastic depth when given a rate, and a probe's BatchNorm on the
   * batch's statistics, moving its running ones. Call in `tf.tidy`.
   */
  headInput(images: RgbImage[], train?: { dropPath?: { rate: number; rng: Rng } }): tf.Tensor {
    const f = backboneFeatures(this.P, this.dims, images, train?.dropPath);
    const x = norm(resolve(this.modules.fc_norm, this.P), f);
    const head = this.modules.head;
    if ('weight' in head) return x;
    const stat = (s: ParamSpec) => this.params.stats.get(s.name)!;
    return batchNorm(x, { mean: stat(head[0].running_mean), variance: stat(head[0].running_var) }, train !== undefined, PROBE_EPS);
  }

  /** Class scores `[B, classes]` of the head's input. */
  head(x: tf.Tensor): tf.Tensor {
    const head = this.modules.head;
    return dense(resolve('weight' in head ? head : head[1], this.P), x);
  }

  /** Class scores `[B, classes]` of images (evaluation unless `train`). Call in `tf.tidy`. */
  logits(images: RgbImage[], train?: { dropPath?: { rate: number; rng: Rng } }): tf.Tensor {
    return this.head(this.headInput(images, train));
  }

  /** MAE's `lr_decay.py`: embeddings layer 0, block i layer i + 1, the rest (fc_norm, head) layer depth + 1. */
  lrScale(name: string, layerDecay: number): number {
    const { depth } = this.dims;
    const layer = name.startsWith('blocks.') ? Number(name.split('.')[1]) + 1 : isBackbone(name) ? 0 : depth + 1;
    return layerDecay ** (depth + 1 - layer);
  }

  get decays() {
    return this.params.decays;
  }

  dispose(): void {
    this.params.dispose();
  }
}

/**
 * The official Swin fine-tuning model's tensors (`models_swin.py`, docs/method.md#swin-fine-tuning): the backbone in its
 * initialisation, the final `norm`, and the new `head` at std {@link headStd}. The
 * official groups skip only 1-D tensors and biases, so its bias tables decay. No linear probe: the official Swin code has none.
 */
export function swinClassifierParams(d: SwinDims, classes: number, scratch = false) {
  const W = d.widths.at(-1)!;
  return declare({ ...swinBackboneParams(d, true), norm: normParams(W), head: linearParams(classes, W, normal(headStd(scratch))) });
}

/**
 * The official Swin fine-tuning model: the windowed backbone on all tokens, the last stage's tokens averaged, then
 * `norm`, then `head`.
 */
export class SwinClassifier implements Classifier {
  readonly dims: SwinDims;
  readonly modules: ReturnType<typeof swinClassifierParams>;
  readonly params: ParamStore;
  /** Every image's tokens are all visible: one grouping plan, kept for the backward passes. */
  private readonly plan: SwinPlanTensors;
  readonly classes: number;
  readonly probe = false;

  constructor(
    readonly config: ModelConfig,
    head: HeadSpec,
    seed: number,
  ) {
    if (head.probe) throw new Error("a linear probe is MAE's ViT protocol; the official Swin code has none");
    this.classes = head.classes;
    this.dims = swinDims(config);
    this.modules = swinClassifierParams(this.dims, head.classes, head.scratch);
    this.params = new ParamStore(this.modules, seed);
    this.plan = fullPlan(this.dims);
  }

  readonly P = (name: string) => this.params.get(name);

  /** The pooled, normalised last-stage tokens `[B, C_last]`. Call in `tf.tidy`. */
  headInput(images: RgbImage[], train?: { dropPath?: { rate: number; rng: Rng } }): tf.Tensor {
    const x = swinTokens(this.P, this.plan, images, { dropPath: train?.dropPath });
    return norm(resolve(this.modules.norm, this.P), tf.mean(x, 1));
  }

  head(x: tf.Tensor): tf.Tensor {
    return dense(resolve(this.modules.head, this.P), x);
  }

  logits(images: RgbImage[], train?: { dropPath?: { rate: number; rng: Rng } }): tf.Tensor {
    return this.head(this.headInput(images, train));
  }

  lrScale(name: string, layerDecay: number): number {
    const N = this.dims.depths.reduce((a, b) => a + b, 0);
    return layerDecay ** (N + 1 - swinLayerId(name, this.dims.depths));
  }

  get decays() {
    return this.params.decays;
  }

  dispose(): void {
    disposePlanTensors(this.plan);
    this.params.dispose();
  }
}

/** The grouping plan of all mask units visible, at true coordinates: the standard windowed Swin. */
export const fullPlan = (d: SwinDims) =>
  planTensors(
    d,
    swinPlan(
      d,
      Int32Array.from({ length: d.units }, (_, u) => u),
      'true',
    ),
  );

/**
 * The last stage's tokens `[B, T, C]` of full images through the fine-tuning model's backbone: the pretraining encoder
 * with every token visible (its windows are then the standard shifted windows), timm's merge order and `norm2` eps 1e-5
 * (docs/method.md#swin-fine-tuning). Token order is mask-unit-major. Call in `tf.tidy`.
 */
export function swinTokens(
  P: Param,
  plan: SwinPlanTensors,
  images: RgbImage[],
  o: Pick<SwinEncoderOptions, 'dropPath' | 'onAttention'> = {},
): tf.Tensor {
  const patches = unitPatches(normalize(toTensor(images)), plan.dims, plan.plan.units);
  const m = resolve(declare(swinBackboneParams(plan.dims)), P);
  return swinEncode(m, patches, plan, { ...o, merge: 'timm', norm2Eps: 1e-5 }).at(-1)!;
}

/**
 * The official `get_swin_layer`: `patch_embed` 0, block j of stage i (blocks before stage i) + j + 1, stage i's patch
 * merging the blocks up to and including stage i, anything else (`norm`, `head`) N + 1 for N blocks in all.
 */
export function swinLayerId(name: string, depths: readonly number[]): number {
  const before = (i: number) => depths.slice(0, i).reduce((a, b) => a + b, 0);
  if (name.startsWith('patch_embed.')) return 0;
  const m = /^layers\.(\d+)\.(?:blocks\.(\d+)|downsample)\./.exec(name);
  if (!m) return before(depths.length) + 1;
  const i = Number(m[1]);
  return m[2] === undefined ? before(i + 1) : before(i) + Number(m[2]) + 1;
}

/**
 * The Swin backbone's features of each image, as timm's `forward_head(pre_logits=True)`: the mean over positions of the
 * last stage's tokens after the final `norm` (docs/method.md#swin-export). Returns `[B, C_last]`; call in `tf.tidy`.
 */
export function swinFeatures(P: Param, dims: SwinDims, images: RgbImage[]): tf.Tensor {
  const plan = fullPlan(dims);
  const x = swinTokens(P, plan, images);
  disposePlanTensors(plan);
  const [B, T, C] = x.shape as [number, number, number];
  const normed = norm(resolve(swinClassifierParams(dims, 0).norm, P), tf.reshape(x, [B * T, C]));
  return tf.mean(tf.reshape(normed, [B, T, C]), 1);
}

/** The features `localmim features` prints, of either family: `[B, D]`; call in `tf.tidy`. */
export function featuresOf(P: Param, model: ModelConfig, images: RgbImage[]): tf.Tensor {
  return modelFamily(model) === 'swin' ? swinFeatures(P, swinDims(model), images) : backboneFeatures(P, modelDims(model), images);
}

/** Which features a linear probe reads: the mean-pooled last block, or the last 4 blocks' concatenated (as DINOv2). */
export type ProbeFeatures = 'last' | 'last4';

/** A ViT's mean-pooled patch tokens of each of its last `n` blocks, side by side: `[B, n·D]`; call in `tf.tidy`. */
export function lastBlocksFeatures(P: Param, model: ModelConfig, images: RgbImage[], n = 4): tf.Tensor {
  if (modelFamily(model) === 'swin') throw new Error('the last blocks’ features are a ViT’s; a Swin has stages');
  const { blocks } = encodeImages(P, modelDims(model), images);
  return tf.concat(
    blocks.slice(-n).map((x) => meanPatchTokens(x, images.length)),
    1,
  );
}

/**
 * Names of the backbone's tensors, ViT's or Swin's: what a fine-tuning run takes from a pretraining checkpoint, and what
 * export keeps. Swin's per-stage latent norms `norm.k` are not among them (the official fine-tuning does not load them).
 */
export const isBackbone = (name: string) =>
  name === 'cls_token' ||
  name === 'pos_embed' ||
  name.startsWith('patch_embed.') ||
  name.startsWith('blocks.') ||
  name.startsWith('layers.');
