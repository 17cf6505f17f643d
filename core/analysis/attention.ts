import * as tf from '@tensorflow/tfjs';
import { modelDims, modelFamily, type ModelConfig, type ModelDims } from '../config.js';
import { UserError } from '../errors.js';
import { encodeImages } from '../model/classifier.js';
import type { Param } from '../model/module.js';
import type { RgbImage } from '../image.js';

/**
 * Normalised mutual information between query and key patches (paper Fig. 3) of one attention matrix
 * `A [Nq, Nk]` (rows sum to 1): with queries uniform, p(q, k) = A[q, k] / Nq, and
 * NMI = I(Q; K) / sqrt(H(Q) · H(K)). 0 when attention does not depend on the query; 1 for distinct one-hot rows.
 */
export function nmi(A: ArrayLike<number>, Nq: number, Nk: number): number {
  const pk = new Float64Array(Nk);
  for (let q = 0; q < Nq; q++) for (let k = 0; k < Nk; k++) pk[k]! += A[q * Nk + k]! / Nq;
  let mi = 0;
  for (let q = 0; q < Nq; q++)
    for (let k = 0; k < Nk; k++) {
      const a = A[q * Nk + k]!;
      if (a > 0) mi += (a / Nq) * Math.log(a / pk[k]!);
    }
  const hq = Math.log(Nq);
  const hk = -pk.reduce((s, v) => s + (v > 0 ? v * Math.log(v) : 0), 0);
  return hq > 0 && hk > 0 ? Math.max(0, mi) / Math.sqrt(hq * hk) : 0;
}

/**
 * Mean KL divergence between the attention distributions of all ordered pairs of distinct queries
 * (paper Fig. 6). Rows are smoothed by `eps` so that one-hot rows give a large but finite value.
 * O(Nq·Nk): Σ_{i,j} KL(r_i‖r_j) = Nq·Σ_{i,k} r_ik·log r_ik − Σ_k (Σ_i r_ik)(Σ_j log r_jk), the i = j terms being 0.
 */
export function meanPairKL(A: ArrayLike<number>, Nq: number, Nk: number, eps = 1e-6): number {
  if (Nq < 2) return 0;
  const mass = new Float64Array(Nk);
  const logs = new Float64Array(Nk);
  let negEntropy = 0;
  for (let q = 0; q < Nq; q++) {
    let s = 0;
    for (let k = 0; k < Nk; k++) s += A[q * Nk + k]! + eps;
    for (let k = 0; k < Nk; k++) {
      const r = (A[q * Nk + k]! + eps) / s;
      const log = Math.log(r);
      negEntropy += r * log;
      mass[k]! += r;
      logs[k]! += log;
    }
  }
  let cross = 0;
  for (let k = 0; k < Nk; k++) cross += mass[k]! * logs[k]!;
  return (Nq * negEntropy - cross) / (Nq * (Nq - 1));
}

export interface LayerAttention {
  block: number;
  /** Mean over heads of the NMI and of the mean pairwise KL, over patch queries and patch keys. */
  nmi: number;
  kl: number;
  /** The query patch's attention over the patches, per head `[H][L]` and averaged `[L]` (each sums to 1). */
  heads: number[][];
  mean: number[];
}

/**
 * Refuses a Swin run in one line where an analysis needs a ViT's image-wide attention (statistics over a set, gradient
 * norms, the app's maps); `localmim analyze RUN --image` gives Swin's per-window maps (core/analysis/swinAttention.ts).
 */
export function checkAnalyzable(model: ModelConfig, runId: number, what: string): void {
  if (modelFamily(model) === 'swin')
    throw new UserError(
      `run ${runId} is a Swin model: ${what} needs a ViT's attention over all patches; Swin attends within windows (localmim analyze ${runId} --image FILE shows them)`,
    );
}

/** Attention of every block on one image (all patches visible), and its statistics per layer. */
export async function attentionAnalysis(P: Param, model: ModelConfig, image: RgbImage, query: number): Promise<LayerAttention[]> {
  const dims = modelDims(model);
  const { L } = dims;
  if (query < 0 || query >= L) throw new Error(`query: patch ${query} is outside the ${dims.g}×${dims.g} grid (0…${L - 1})`);
  const layers: LayerAttention[] = [];
  await visitAttention(P, dims, [image], (_, block, perHead) =>
    layers.push({
      block,
      ...layerStats(perHead, L),
      heads: perHead.map((A) => Array.from(A.subarray(query * L, (query + 1) * L))),
      mean: Array.from({ length: L }, (_, k) => perHead.reduce((s, A) => s + A[query * L + k]!, 0) / perHead.length),
    }),
  );
  return layers;
}

/** NMI and mean pairwise KL of one block on one image, each averaged over the heads' `[L, L]` patch attention. */
export function layerStats(perHead: Float64Array[], L: number): { nmi: number; kl: number } {
  const mean = (f: (A: Float64Array) => number) => perHead.reduce((s, A) => s + f(A), 0) / perHead.length;
  return { nmi: mean((A) => nmi(A, L, L)), kl: mean((A) => meanPairKL(A, L, L)) };
}

/**
 * Encodes the images as one batch and hands each (image, block) its heads' patch-to-patch attention `[H][L·L]`
 * (class token dropped, rows renormalised over the patches), block by block.
 */
export async function visitAttention(
  P: Param,
  dims: ModelDims,
  images: RgbImage[],
  visit: (image: number, block: number, perHead: Float64Array[]) => void,
): Promise<void> {
  const kept: tf.Tensor[] = [];
  tf.tidy(() => {
    encodeImages(P, dims, images, { onAttention: (_, a) => kept.push(tf.keep(a)) });
  });
  const T = 1 + dims.L;
  try {
    for (const [block, t] of kept.entries()) {
      // [B·H, T, T], image-major.
      const a = (await t.data()) as Float32Array;
      for (let b = 0; b < images.length; b++)
        visit(
          b,
          block,
          Array.from({ length: dims.heads }, (_, h) =>
            patchAttention(a.subarray((b * dims.heads + h) * T * T, (b * dims.heads + h + 1) * T * T), T),
          ),
        );
    }
  } finally {
    tf.dispose(kept);
  }
}

/** Patch-to-patch attention `[L, L]` from `[T, T]` (class token dropped, rows renormalised over patches). */
function patchAttention(a: Float32Array, T: number): Float64Array {
  const L = T - 1;
  const out = new Float64Array(L * L);
  for (let q = 0; q < L; q++) {
    let s = 0;
    for (let k = 0; k < L; k++) s += a[(q + 1) * T + k + 1]!;
    for (let k = 0; k < L; k++) out[q * L + k] = a[(q + 1) * T + k + 1]! / s;
  }
  return out;
}
