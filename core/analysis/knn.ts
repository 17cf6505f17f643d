import * as tf from '@tensorflow/tfjs';
import { modelFamily, swinDims, type ModelConfig } from '../config.js';
import type { DecodeCache } from '../data/cache.js';
import type { DataItem } from '../data/loader.js';
import { evalImage } from '../data/preprocess.js';
import { featuresOf, lastBlocksFeatures, type ProbeFeatures } from '../model/classifier.js';
import type { Param, ParamStore } from '../model/module.js';
import { fitLinearProbe, holdoutSplit, layerNormRows, probeTop1, type Embedded } from './linear-probe.js';

/** DINO's weighted kNN evaluation (eval_knn.py): k = 20 neighbours by cosine similarity, each voting exp(sim / 0.07). */
export const KNN = { k: 20, temperature: 0.07 };

/** By default kNN evaluations may take this share of a run's time (core/train/loop.ts). */
export const KNN_BUDGET = 0.1;

/** Images embedded per forward pass. */
const EMBED_BATCH = 16;

/** A run's probe set: a labeled folder split (seeded) into a reference and a query part. */
export interface ProbeSet {
  classes: string[];
  reference: (DataItem & { label: number })[];
  query: (DataItem & { label: number })[];
  /** Score every this many steps; absent: as often as keeps kNN within KNN_BUDGET of the time. */
  every?: number;
}

/** Each row scaled to unit length (a zero row stays zero). */
export function l2Normalize(x: Float32Array, dim: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i += dim) {
    let s = 0;
    for (let d = 0; d < dim; d++) s += x[i + d]! ** 2;
    const inv = s > 0 ? 1 / Math.sqrt(s) : 0;
    for (let d = 0; d < dim; d++) out[i + d] = x[i + d]! * inv;
  }
  return out;
}

/**
 * Weighted kNN top-1 and top-5 of `query` against `reference`: each query's k most cosine-similar references vote
 * exp(sim / T) for their class; classes rank by their summed votes (ties by class index), as DINO's evaluation.
 */
export function knnScore(reference: Embedded, query: Embedded, classes: number, o = KNN): { top1: number; top5: number } {
  const { dim } = reference;
  const R = l2Normalize(reference.features, dim);
  const Q = l2Normalize(query.features, dim);
  const nRef = reference.labels.length;
  const k = Math.min(o.k, nRef);
  let top1 = 0;
  let top5 = 0;
  const sims = new Float32Array(nRef);
  for (let q = 0; q < query.labels.length; q++) {
    for (let r = 0; r < nRef; r++) {
      let s = 0;
      for (let d = 0; d < dim; d++) s += Q[q * dim + d]! * R[r * dim + d]!;
      sims[r] = s;
    }
    const nearest = [...sims.keys()].sort((a, b) => sims[b]! - sims[a]!).slice(0, k);
    const votes = new Float64Array(classes);
    for (const r of nearest) votes[reference.labels[r]!]! += Math.exp(sims[r]! / o.temperature);
    const ranked = [...votes.keys()].sort((a, b) => votes[b]! - votes[a]! || a - b);
    const rank = ranked.indexOf(query.labels[q]!);
    if (rank === 0) top1++;
    if (rank >= 0 && rank < Math.min(5, k)) top5++;
  }
  const n = Math.max(1, query.labels.length);
  return { top1: top1 / n, top5: top5 / n };
}

/**
 * Mean-pooled backbone features of images (the evaluation transform, decodes through the cache), `EMBED_BATCH` at a
 * time: the last block's, or with `kind` 'last4' a ViT's last 4 blocks' side by side.
 */
export async function embedItems(
  P: Param,
  model: ModelConfig,
  items: DataItem[],
  cache?: DecodeCache,
  onBatch?: (done: number) => void,
  kind: ProbeFeatures = 'last',
): Promise<{ features: Float32Array; dim: number }> {
  const parts: Float32Array[] = [];
  let dim = 0;
  for (let i = 0; i < items.length; i += EMBED_BATCH) {
    const batch = items.slice(i, i + EMBED_BATCH);
    const images = await Promise.all(batch.map((it) => evalImage(it.abs, model.imgSize, cache && { cache, hash: it.hash })));
    const t = tf.tidy(() => (kind === 'last' ? featuresOf(P, model, images) : lastBlocksFeatures(P, model, images))); // [B, D]
    dim = t.shape[1]!;
    parts.push((await t.data()) as Float32Array);
    t.dispose();
    onBatch?.(Math.min(i + EMBED_BATCH, items.length));
  }
  const features = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  parts.reduce((at, p) => (features.set(p, at), at + p.length), 0);
  return { features, dim };
}

/** A training model's backbone as `featuresOf` reads it; a pretraining Swin's final norm is its last stage's latent norm, as export's. */
export function liveBackbone(params: ParamStore, model: ModelConfig): Param {
  if (modelFamily(model) !== 'swin') return (name) => params.get(name);
  const last = `norm.${swinDims(model).depths.length - 1}.`;
  return (name) => params.get(name.startsWith('norm.') ? last + name.slice('norm.'.length) : name);
}

/**
 * Scores the backbone's current weights on a probe set: embeds both parts once, then {@link scoreEmbedded}.
 */
export async function scoreProbe(
  P: Param,
  model: ModelConfig,
  probe: ProbeSet,
  cache?: DecodeCache,
): Promise<{ top1: number; top5: number; probeTop1?: number }> {
  const embedded = async (items: ProbeSet['reference']) => ({
    ...(await embedItems(P, model, items, cache)),
    labels: items.map((i) => i.label),
  });
  return scoreEmbedded(await embedded(probe.reference), await embedded(probe.query), probe.classes.length);
}

/**
 * A probe set's scores from its parts' features, whichever engine embedded them: weighted kNN, and the logistic
 * linear probe fitted on the reference part (through fc_norm's LayerNorm, as a probe run's), where some class of it
 * has two images to hold one out.
 */
export async function scoreEmbedded(
  reference: Embedded,
  query: Embedded,
  classes: number,
): Promise<{ top1: number; top5: number; probeTop1?: number }> {
  const knn = knnScore(reference, query, classes);
  if (!holdoutSplit(reference.labels, 0).holdout.length) return knn;
  const normed = (e: Embedded) => ({ ...e, features: layerNormRows(e.features, e.dim) });
  const { head } = await fitLinearProbe(normed(reference), classes);
  return { ...knn, probeTop1: probeTop1(head, normed(query)) };
}
