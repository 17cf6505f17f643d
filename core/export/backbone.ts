import { createHash } from 'node:crypto';
import * as tf from '@tensorflow/tfjs';
import { modelDims, modelFamily, swinDims, SWIN_SIZES, type ModelConfig, type SwinSize } from '../config.js';
import { isBackbone, PROBE_EPS } from '../model/classifier.js';
import type { LoadedCheckpoint } from '../train/checkpoint.js';
import type { Param } from '../model/module.js';
import { specOf } from '../runs/spec.js';
import type { RunRow, Store } from '../store/store.js';
import type { NamedTensor } from '../safetensors.js';

/** What a checkpoint holds for use outside pretraining: the backbone, and for a fine-tuned run its head. */
export interface Backbone {
  model: ModelConfig;
  /**
   * ViT: timm names and layouts: cls_token, pos_embed, patch_embed.proj.*, blocks.*, and fc_norm.*, head.* when
   * fine-tuned. Swin: the official names (patch_embed.*, layers.*, the final norm.*, head.* when fine-tuned), which
   * export renames to timm's (core/export/timmSwin.ts).
   */
  tensors: Map<string, NamedTensor>;
  classes: string[] | null;
}

export function backboneOf(run: RunRow, ckpt: LoadedCheckpoint): Backbone {
  const spec = specOf(run);
  const finetuned = spec.kind === 'finetune';
  if (modelFamily(spec.config.model) === 'swin')
    return {
      model: spec.config.model,
      tensors: swinBackboneTensors(ckpt.tensors, spec.config.model, finetuned),
      classes: finetuned ? spec.config.classes : null,
    };
  const keep = (name: string) => isBackbone(name) || (finetuned && (name.startsWith('fc_norm.') || name.startsWith('head.')));
  const tensors = new Map([...ckpt.tensors].filter(([name]) => keep(name)));
  if (finetuned && spec.config.finetune.linearProbe) foldProbeHead(tensors);
  return { model: spec.config.model, tensors, classes: finetuned ? spec.config.classes : null };
}

/**
 * A Swin checkpoint's backbone with its final `norm` (docs/method.md#swin-export): a fine-tuned run's own `norm` and
 * `head`; a pretraining (or imported) run's last per-stage latent norm `norm.{S−1}`, the one on the last stage's tokens.
 */
function swinBackboneTensors(all: ReadonlyMap<string, NamedTensor>, model: ModelConfig, finetuned: boolean): Map<string, NamedTensor> {
  const last = `norm.${swinDims(model).depths.length - 1}.`;
  const out = new Map<string, NamedTensor>();
  for (const [name, t] of all) {
    if (isBackbone(name) || (finetuned && (name.startsWith('norm.') || name.startsWith('head.')))) out.set(name, t);
    else if (!finetuned && name.startsWith(last)) out.set(`norm.${name.slice(last.length)}`, t);
  }
  return out;
}

/**
 * A linear probe's evaluation-mode head, BatchNorm `head.0` then Linear `head.1`, as one Linear `head` (timm's):
 * `W' = W / √(var + eps)` column by column, `b' = b − W'·mean`.
 */
export function foldProbeHead(tensors: Map<string, NamedTensor>): void {
  const take = (name: string) => {
    const t = tensors.get(name);
    if (!t) throw new Error(`linear probe weights have no tensor named ${name}`);
    tensors.delete(name);
    return t;
  };
  const mean = take('head.0.running_mean').values;
  const variance = take('head.0.running_var').values;
  const W = take('head.1.weight');
  const bias = Float32Array.from(take('head.1.bias').values);
  const [K, D] = W.shape as [number, number];
  const folded = new Float32Array(K * D);
  for (let k = 0; k < K; k++)
    for (let d = 0; d < D; d++) {
      folded[k * D + d] = W.values[k * D + d]! / Math.sqrt(variance[d]! + PROBE_EPS);
      bias[k] = bias[k]! - folded[k * D + d]! * mean[d]!;
    }
  tensors.set('head.weight', { shape: [K, D], values: folded });
  tensors.set('head.bias', { shape: [K], values: bias });
}

/** Parameters read straight from named tensors (each call makes a tensor: use inside `tf.tidy`). */
export function paramsOf(tensors: ReadonlyMap<string, NamedTensor>): Param {
  return (name) => {
    const t = tensors.get(name);
    if (!t) throw new Error(`weights have no tensor named ${name}`);
    return tf.tensor(t.values, t.shape);
  };
}

/** A fingerprint of a dataset's content: sha256 over its images' hashes in path order. */
export function datasetHash(store: Store, datasetId: number): { images: number; hash: string } {
  const rows = store.images(datasetId, 'ok');
  const h = createHash('sha256');
  for (const r of rows) h.update(r.hash!);
  return { images: rows.length, hash: h.digest('hex') };
}

/** timm's `SwinTransformer` (timm ≥ 0.9) arguments for a Swin backbone, named by its width and stage depths. */
export function timmSwinConfig(b: Backbone) {
  const d = swinDims(b.model);
  const named = `${d.C}:${d.depths.join(',')}`;
  const size = { '96:2,2,6,2': 'tiny', '96:2,2,18,2': 'small', '128:2,2,18,2': 'base', '192:2,2,18,2': 'large' }[named] ?? 'tiny';
  const window = b.model.windowSize ?? SWIN_SIZES[b.model.size as SwinSize].window;
  return {
    architecture: `swin_${size}_patch4_window7_224`,
    num_classes: b.classes?.length ?? 0,
    global_pool: 'avg',
    label_names: b.classes ?? undefined,
    model_args: {
      img_size: b.model.imgSize,
      patch_size: d.p,
      window_size: window,
      embed_dim: d.C,
      depths: d.depths,
      num_heads: d.heads,
      mlp_ratio: b.model.mlpRatio,
      qkv_bias: true,
    },
    pretrained_cfg: pretrainedCfg(b, 'head.fc'),
  };
}

/** timm's preprocessing of either family's export: ImageNet normalisation, bicubic resize, and where its classifier is. */
const pretrainedCfg = (b: Backbone, classifier: string) => ({
  input_size: [3, b.model.imgSize, b.model.imgSize],
  mean: [0.485, 0.456, 0.406],
  std: [0.229, 0.224, 0.225],
  interpolation: 'bicubic',
  crop_pct: 0.875,
  classifier,
});

/** timm's `VisionTransformer` arguments for this backbone (global average pooling and fc_norm, as the official fine-tuning: docs/method.md#fine-tuning). */
export function timmConfig(b: Backbone) {
  const { D, depth, heads, p } = modelDims(b.model);
  const named = { 192: 'vit_tiny', 384: 'vit_small', 768: 'vit_base', 1024: 'vit_large' }[D] ?? 'vit_base';
  return {
    architecture: `${named}_patch16_224`,
    num_classes: b.classes?.length ?? 0,
    global_pool: 'avg',
    label_names: b.classes ?? undefined,
    model_args: {
      img_size: b.model.imgSize,
      patch_size: p,
      embed_dim: D,
      depth,
      num_heads: heads,
      mlp_ratio: b.model.mlpRatio,
      qkv_bias: true,
      class_token: true,
      global_pool: 'avg',
    },
    pretrained_cfg: pretrainedCfg(b, 'head'),
  };
}
