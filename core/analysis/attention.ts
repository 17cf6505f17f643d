import * as tf from '@tensorflow/tfjs';
import { modelDims, type ModelConfig } from '../config.js';
import { encodeImages } from '../model/classifier.js';
import type { Param } from '../model/vit.js';
import type { RgbImage } from '../targets/image.js';

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
 */
export function meanPairKL(A: ArrayLike<number>, Nq: number, Nk: number, eps = 1e-6): number {
  const rows = Array.from({ length: Nq }, (_, q) => {
    const r = Float64Array.from({ length: Nk }, (_, k) => A[q * Nk + k]! + eps);
    const s = r.reduce((a, b) => a + b, 0);
    return r.map((v) => v / s);
  });
  const logs = rows.map((r) => r.map(Math.log));
  let total = 0;
  for (let i = 0; i < Nq; i++)
    for (let j = 0; j < Nq; j++) {
      if (i === j) continue;
      for (let k = 0; k < Nk; k++) total += rows[i]![k]! * (logs[i]![k]! - logs[j]![k]!);
    }
  return Nq > 1 ? total / (Nq * (Nq - 1)) : 0;
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

/** Attention of every block on one image (all patches visible), and its statistics per layer. */
export async function attentionAnalysis(P: Param, model: ModelConfig, image: RgbImage, query: number): Promise<LayerAttention[]> {
  const dims = modelDims(model);
  const { L, heads } = dims;
  if (query < 0 || query >= L) throw new Error(`query: patch ${query} is outside the ${dims.g}×${dims.g} grid (0…${L - 1})`);
  const kept: tf.Tensor[] = [];
  tf.tidy(() => {
    encodeImages(P, dims, [image], { onAttention: (_, a) => kept.push(tf.keep(a)) });
  });
  const probs = (await Promise.all(kept.map((a) => a.data()))) as Float32Array[];
  tf.dispose(kept);
  const T = 1 + L;
  return probs.map((a, block) => {
    const perHead = Array.from({ length: heads }, (_, h) => patchAttention(a.subarray(h * T * T, (h + 1) * T * T), T));
    const mean = Array.from({ length: L }, (_, k) => perHead.reduce((s, A) => s + A[query * L + k]!, 0) / heads);
    return {
      block,
      nmi: perHead.reduce((s, A) => s + nmi(A, L, L), 0) / heads,
      kl: perHead.reduce((s, A) => s + meanPairKL(A, L, L), 0) / heads,
      heads: perHead.map((A) => Array.from(A.subarray(query * L, (query + 1) * L))),
      mean,
    };
  });
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
