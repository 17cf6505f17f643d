import * as tf from '@tensorflow/tfjs';
import {
  fusedAttention,
  fusedAttentionGrad,
  fusedColumnSum,
  fusedGelu,
  fusedGeluGrad,
  fusedLayerNorm,
  fusedLayerNormGrad,
  fusedLinear,
  nativeOr,
  type Heads,
} from '../native.js';

// tfjs's wasm backend hands only plain (untransposed) matmuls to its fast GEMM, and tf.matMul's own
// gradient uses transposed ones (docs/tfjs.md#fast-matmuls-on-wasm). These ops transpose explicitly in forward and backward,
// unless the native sgemm (core/native.ts) is on, which takes transposed operands at no cost.

// tf.customGrad's typing takes a variadic (Tensor | GradSaveFunc)[]; ours name their arguments.
type GradFn<A extends unknown[]> = (...args: A) => {
  value: tf.Tensor;
  gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor | tf.Tensor[];
};
export const customGrad = <A extends unknown[]>(f: GradFn<A>) => tf.customGrad(f as unknown as Parameters<typeof tf.customGrad>[0]);

const T2 = (x: tf.Tensor) => tf.transpose(x, x.rank === 2 ? [1, 0] : [0, 2, 1]);
/** `op(a) @ op(b)` without a gradient of its own (for forward and backward passes of custom ops), 2-D or batched 3-D. */
export const matMulT = (a: tf.Tensor, b: tf.Tensor, ta: boolean, tb: boolean) => nativeOr(matMulTransposing, matMulExplicit)(a, b, ta, tb);
const matMulTransposing = (a: tf.Tensor, b: tf.Tensor, ta: boolean, tb: boolean) => tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D, ta, tb);
const matMulExplicit = (a: tf.Tensor, b: tf.Tensor, ta: boolean, tb: boolean) =>
  tf.matMul((ta ? T2(a) : a) as tf.Tensor2D, (tb ? T2(b) : b) as tf.Tensor2D);

/** `a @ b` for 2-D `[M, K] @ [K, N]` or batched 3-D `[n, M, K] @ [n, K, N]`, with transpose-aware gradients. */
export const mm = customGrad((a: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
  save([a, b]);
  return {
    value: tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D),
    gradFunc: (dy: tf.Tensor, [sa, sb]: tf.Tensor[]) => [matMulT(dy, sb!, false, true), matMulT(sa!, dy, true, false)],
  };
}) as (a: tf.Tensor, b: tf.Tensor) => tf.Tensor;

/** Sums over every axis but the last: a bias's gradient, in one native pass where tfjs would transpose first. */
export const columnSum = (dy: tf.Tensor) => nativeOr(fusedColumnSum, columnSumOps)(dy);
const columnSumOps = (dy: tf.Tensor) => tf.sum(tf.reshape(dy, [-1, dy.shape[dy.rank - 1]!]), 0);

/**
 * PyTorch `nn.Linear` on `x [M, in]` with `W [out, in]` (the official layout) and `bias [out]`: one op on the tape that
 * keeps only x and W for the backward pass, as PyTorch's addmm (the product before the bias is never kept).
 */
export function linear(x: tf.Tensor, W: tf.Tensor, bias?: tf.Tensor): tf.Tensor2D {
  return (bias ? linearBias(x, W, bias) : xWt(x, W)) as tf.Tensor2D;
}

const linearBias = customGrad((x: tf.Tensor, W: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
  save([x, W]);
  return {
    value: nativeOr(fusedLinear, linearOps)(x, W, b),
    gradFunc: (dy: tf.Tensor, [sx, sW]: tf.Tensor[]) => [
      tf.matMul(dy as tf.Tensor2D, sW as tf.Tensor2D),
      matMulT(dy, sx!, true, false),
      columnSum(dy),
    ],
  };
}) as (x: tf.Tensor, W: tf.Tensor, b: tf.Tensor) => tf.Tensor;

const linearOps = (x: tf.Tensor, W: tf.Tensor, b: tf.Tensor) => tf.add(matMulT(x, W, false, true), b);

/** `x @ Wᵀ` with W in the official `[out, in]` layout: dx = dy @ W, dW = dyᵀ @ x. */
const xWt = customGrad((x: tf.Tensor, W: tf.Tensor, save: tf.GradSaveFunc) => {
  save([x, W]);
  return {
    value: matMulT(x, W, false, true),
    gradFunc: (dy: tf.Tensor, [sx, sW]: tf.Tensor[]) => [tf.matMul(dy as tf.Tensor2D, sW as tf.Tensor2D), matMulT(dy, sx!, true, false)],
  };
}) as (x: tf.Tensor, W: tf.Tensor) => tf.Tensor;

/** B sequences of T tokens, flattened to `[B·T, W]` between blocks so that every Linear is a plain 2-D GEMM. */
export interface Seq {
  B: number;
  T: number;
}

export interface AttentionOptions {
  heads: number;
  /** Receives the attention probabilities `[B·H, T, T]`. */
  onProbs?: (p: tf.Tensor) => void;
  /** `[n, heads, T, T]`, added to the scores of sequence b as its row b mod n (Swin's relative positions and window masks). */
  bias?: tf.Tensor;
}

/**
 * Multi-head scaled dot-product attention on the fused projection `qkv [B·T, 3W]` (timm's layout: q, k, v, each
 * head-major), returning `[B·T, W]` with the heads merged. One op on the tape that keeps only its inputs and the
 * probabilities.
 */
export function multiHeadAttention(qkv: tf.Tensor, { B, T }: Seq, { heads, onProbs, bias }: AttentionOptions): tf.Tensor {
  const h: Heads = { B, T, heads, scale: (qkv.shape[1]! / 3 / heads) ** -0.5 };
  const forward = (x: tf.Tensor, b: tf.Tensor | undefined, save: tf.GradSaveFunc) => {
    const [out, probs] = nativeOr(fusedAttention, attentionOps)(x, h, b);
    onProbs?.(probs!);
    save(b ? [x, probs!, b] : [x, probs!]);
    return {
      value: out!,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => nativeOr(fusedAttentionGrad, attentionGradOps)(dy, saved, h),
    };
  };
  if (!bias) return (customGrad((x: tf.Tensor, save: tf.GradSaveFunc) => forward(x, undefined, save)) as (x: tf.Tensor) => tf.Tensor)(qkv);
  const op = customGrad((x: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => forward(x, b, save)) as (
    x: tf.Tensor,
    b: tf.Tensor,
  ) => tf.Tensor;
  return op(qkv, bias);
}

/** q, k, v `[B·H, T, hd]` of a fused projection `[B·T, 3W]`. */
function splitHeads(qkv: tf.Tensor, { B, T, heads }: Heads): tf.Tensor[] {
  const hd = qkv.shape[1]! / 3 / heads;
  const x = tf.transpose(tf.reshape(qkv, [B, T, 3, heads, hd]), [2, 0, 3, 1, 4]); // [3, B, H, T, hd]
  return tf.unstack(tf.reshape(x, [3, B * heads, T, hd]));
}

const toHeads = (x: tf.Tensor, { B, T, heads }: Heads) =>
  tf.reshape(tf.transpose(tf.reshape(x, [B, T, heads, -1]), [0, 2, 1, 3]), [B * heads, T, -1]); // [B·T, W] -> [B·H, T, hd]
const fromHeads = (x: tf.Tensor, { B, T, heads }: Heads) =>
  tf.reshape(tf.transpose(tf.reshape(x, [B, heads, T, -1]), [0, 2, 1, 3]), [B * T, -1]); // [B·H, T, hd] -> [B·T, W]

/** `scores [B·H, T, T]` plus `bias [n, H, T, T]` as row b mod n of sequence b. */
const addBias = (scores: tf.Tensor, bias: tf.Tensor, { T }: Heads) =>
  tf.reshape(tf.add(tf.reshape(scores, [-1, bias.shape[0]! * bias.shape[1]!, T, T]), bias.reshape([-1, T, T])), scores.shape);

function attentionOps(qkv: tf.Tensor, h: Heads, bias?: tf.Tensor): tf.Tensor[] {
  const [q, k, v] = splitHeads(qkv, h);
  const scores = tf.mul(matMulT(q!, k!, false, true), h.scale); // [B·H, T, T]
  const probs = tf.softmax(bias ? addBias(scores, bias, h) : scores);
  return [fromHeads(matMulT(probs, v!, false, false), h), probs];
}

/**
 * dV = Pᵀ dO, dS = P ⊙ (dP − Σ_j P ⊙ dP) with dP = dO Vᵀ, dQ = scale·dS K, dK = scale·dSᵀ Q, in qkv's layout; and the
 * bias's gradient, dS summed over the sequences that share each of its rows. `saved`: the forward's `[qkv, probs, bias?]`.
 */
function attentionGradOps(dout: tf.Tensor, [qkv, probs, bias]: tf.Tensor[], h: Heads): tf.Tensor[] {
  const [q, k, v] = splitHeads(qkv!, h);
  const dO = toHeads(dout, h);
  const dP = matMulT(dO, v!, false, true);
  const dS = tf.mul(probs!, tf.sub(dP, tf.sum(tf.mul(dP, probs!), -1, true)));
  const grads = [
    tf.mul(matMulT(dS, k!, false, false), h.scale),
    tf.mul(matMulT(dS, q!, true, false), h.scale),
    matMulT(probs!, dO, true, false),
  ];
  const d = tf.reshape(tf.stack(grads), [3, h.B, h.heads, h.T, -1]);
  const dqkv = tf.reshape(tf.transpose(d, [1, 3, 0, 2, 4]), [h.B * h.T, -1]); // [B, T, 3, H, hd]
  return bias ? [dqkv, tf.reshape(tf.sum(tf.reshape(dS, [-1, ...bias.shape]), 0), bias.shape)] : [dqkv];
}

/** LayerNorm over the last axis with PyTorch's biased variance: one native pass each way when the native path is on. */
export function layerNorm(x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor, eps = 1e-6): tf.Tensor {
  return nativeOr(layerNormFused, layerNormOps)(x, weight, bias, eps);
}

function layerNormOps(x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor, eps: number): tf.Tensor {
  const { mean, variance } = tf.moments(x, -1, true);
  return tf.add(tf.mul(tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps))), weight), bias);
}

const layerNormFused = (x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor, eps: number) => fusedLayerNormOp(eps)(x, weight, bias);

const fusedLayerNormOp = (eps: number) =>
  customGrad((x: tf.Tensor, w: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
    const [y, mean, rstd] = fusedLayerNorm(x, w, b, eps);
    save([x, w, mean!, rstd!]);
    return { value: y!, gradFunc: (dy: tf.Tensor, [sx, sw, sm, sr]: tf.Tensor[]) => fusedLayerNormGrad(dy, sx!, sw!, sm!, sr!) };
  }) as (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => tf.Tensor;

/** Exact (erf) GELU, as PyTorch's default: one native pass each way when the native path is on. */
export function gelu(x: tf.Tensor): tf.Tensor {
  return nativeOr(fusedGeluOp, geluOps)(x);
}

const geluOps = (x: tf.Tensor) => tf.mul(tf.mul(x, 0.5), tf.add(1, tf.erf(tf.mul(x, Math.SQRT1_2))));

const fusedGeluOp = customGrad((x: tf.Tensor, save: tf.GradSaveFunc) => {
  save([x]);
  return { value: fusedGelu(x), gradFunc: (dy: tf.Tensor, [sx]: tf.Tensor[]) => fusedGeluGrad(dy, sx!) };
}) as (x: tf.Tensor) => tf.Tensor;

/** Identity forward, zero gradient: tfjs has no stop_gradient op. */
export const stopGradient = customGrad((x: tf.Tensor) => ({
  value: tf.clone(x),
  gradFunc: (dy: tf.Tensor) => tf.zerosLike(dy),
})) as (x: tf.Tensor) => tf.Tensor;

/** Running statistics of a BatchNorm, moved by training (PyTorch's `running_mean`, `running_var`). */
export interface RunningStats {
  mean: tf.Variable;
  variance: tf.Variable;
}

/**
 * PyTorch's `BatchNorm1d(affine=False)` on `x [B, D]`, momentum 0.1: in training, `(x − mean) / √(var + eps)` with the
 * batch's mean and biased variance, moving the running mean and the running (unbiased) variance; in evaluation, the
 * same with the running ones. Training needs B ≥ 2.
 */
export function batchNorm(x: tf.Tensor, running: RunningStats, train: boolean, eps: number): tf.Tensor {
  let { mean, variance } = running as { mean: tf.Tensor; variance: tf.Tensor };
  if (train) {
    const B = x.shape[0]!;
    ({ mean, variance } = tf.moments(x, 0));
    running.mean.assign(tf.add(tf.mul(running.mean, 0.9), tf.mul(mean, 0.1)));
    running.variance.assign(tf.add(tf.mul(running.variance, 0.9), tf.mul(variance, (0.1 * B) / (B - 1))));
  }
  return tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps)));
}
