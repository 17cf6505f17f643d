import * as tf from '@tensorflow/tfjs';
import { fusedColumnSum, fusedGelu, fusedGeluGrad, fusedLayerNorm, fusedLayerNormGrad, nativeActive } from '../native.js';

// tfjs's wasm backend hands only plain (untransposed) matmuls to its fast GEMM, and tf.matMul's own
// gradient uses transposed ones (docs/tfjs.md#fast-matmuls-on-wasm). These ops transpose explicitly in forward and backward,
// unless the native sgemm (core/native.ts) is on, which takes transposed operands at no cost.

// tf.customGrad's typing takes a variadic (Tensor | GradSaveFunc)[]; ours name their arguments.
type GradFn<A extends unknown[]> = (...args: A) => {
  value: tf.Tensor;
  gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor | tf.Tensor[];
};
const customGrad = <A extends unknown[]>(f: GradFn<A>) => tf.customGrad(f as unknown as Parameters<typeof tf.customGrad>[0]);

const T2 = (x: tf.Tensor) => tf.transpose(x, x.rank === 2 ? [1, 0] : [0, 2, 1]);
const matMulT = (a: tf.Tensor, b: tf.Tensor, ta: boolean, tb: boolean) =>
  nativeActive()
    ? tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D, ta, tb)
    : tf.matMul((ta ? T2(a) : a) as tf.Tensor2D, (tb ? T2(b) : b) as tf.Tensor2D);

/** `a @ b` for 2-D `[M, K] @ [K, N]` or batched 3-D `[n, M, K] @ [n, K, N]`, with transpose-aware gradients. */
export const mm = customGrad((a: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
  save([a, b]);
  return {
    value: tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D),
    gradFunc: (dy: tf.Tensor, [sa, sb]: tf.Tensor[]) => [matMulT(dy, sb!, false, true), matMulT(sa!, dy, true, false)],
  };
}) as (a: tf.Tensor, b: tf.Tensor) => tf.Tensor;

/** `a @ bᵀ` for batched `[n, M, K] @ [n, N, K]ᵀ` (attention scores). */
export const mmNT = (a: tf.Tensor, b: tf.Tensor) =>
  nativeActive() ? tf.matMul(a as tf.Tensor3D, b as tf.Tensor3D, false, true) : mm(a, T2(b));

/** PyTorch `nn.Linear` on `x [M, in]` with `W [out, in]` (the official layout) and `bias [out]`. */
export function linear(x: tf.Tensor, W: tf.Tensor, bias?: tf.Tensor): tf.Tensor2D {
  const y = xWt(x, W);
  return (bias ? (nativeActive() ? addBias(y, bias) : tf.add(y, bias)) : y) as tf.Tensor2D;
}

/** `y + bias` over the rows of `y`, the bias's gradient (column sums of dy) in one native pass, where tfjs transposes first. */
const addBias = customGrad((y: tf.Tensor, bias: tf.Tensor) => ({
  value: tf.add(y, bias),
  gradFunc: (dy: tf.Tensor) => [tf.clone(dy), fusedColumnSum(dy)],
})) as (y: tf.Tensor, bias: tf.Tensor) => tf.Tensor;

/** `x @ Wᵀ` with W in the official `[out, in]` layout: dx = dy @ W, dW = dyᵀ @ x. */
const xWt = customGrad((x: tf.Tensor, W: tf.Tensor, save: tf.GradSaveFunc) => {
  save([x, W]);
  return {
    value: matMulT(x, W, false, true),
    gradFunc: (dy: tf.Tensor, [sx, sW]: tf.Tensor[]) => [tf.matMul(dy as tf.Tensor2D, sW as tf.Tensor2D), matMulT(dy, sx!, true, false)],
  };
}) as (x: tf.Tensor, W: tf.Tensor) => tf.Tensor;

/** LayerNorm over the last axis with PyTorch's biased variance: one native pass each way when the native path is on. */
export function layerNorm(x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor, eps = 1e-6): tf.Tensor {
  if (nativeActive()) return fusedLayerNormOp(eps)(x, weight, bias);
  const { mean, variance } = tf.moments(x, -1, true);
  return tf.add(tf.mul(tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps))), weight), bias);
}

const fusedLayerNormOp = (eps: number) =>
  customGrad((x: tf.Tensor, w: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
    const [y, mean, rstd] = fusedLayerNorm(x, w, b, eps);
    save([x, w, mean!, rstd!]);
    return { value: y!, gradFunc: (dy: tf.Tensor, [sx, sw, sm, sr]: tf.Tensor[]) => fusedLayerNormGrad(dy, sx!, sw!, sm!, sr!) };
  }) as (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => tf.Tensor;

/** Exact (erf) GELU, as PyTorch's default: one native pass each way when the native path is on. */
export function gelu(x: tf.Tensor): tf.Tensor {
  if (nativeActive()) return fusedGeluOp(x);
  return tf.mul(tf.mul(x, 0.5), tf.add(1, tf.erf(tf.mul(x, Math.SQRT1_2))));
}

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
