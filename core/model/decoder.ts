import * as tf from '@tensorflow/tfjs';
import type { ModelConfig, ModelDims, Scale } from '../config.js';
import {
  buffer,
  dense,
  fill,
  linearParams,
  norm,
  normal,
  normParams,
  param,
  range,
  uniform,
  xavier,
  type NormParams,
  type ParamSpec,
  type Tensors,
} from './module.js';
import { columnSum, customGrad, gelu, linear, matMulT, mm } from './ops.js';
import { sinCosPosEmbed } from './posEmbed.js';
import { block, blockParams } from './vit.js';

/**
 * Where the class token and the visible tokens go back in the full sequence: `select [B, 1+L, 1+nKeep]` one-hot, and
 * `mask [B, 1+L, 1]`, 1 where a patch was removed (the class token's row 0 keeps itself and is never masked).
 */
export interface Unshuffle {
  select: tf.Tensor;
  mask: tf.Tensor;
}

/** The rescaling head of each scale (docs/method.md#decoders-and-scales) on d channels, layers at the official `pred.k` indices. */
export type PredLayer =
  { kind: 'deconv' | 'conv'; weight: ParamSpec; bias: ParamSpec } | ({ kind: 'norm' } & NormParams) | { kind: 'gelu' } | { kind: 'pool' };

export function predParams(s: Scale, d: number, F: number, mae: boolean): PredLayer[] {
  // PyTorch's conv defaults, U(±1/√fan_in); a transposed conv [in, out, k, k] has fan_in = out·k².
  const deconv = (i: number, o: number): PredLayer => {
    const init = uniform(1 / Math.sqrt(o * 4));
    return { kind: 'deconv', weight: param([i, o, 2, 2], init), bias: param([o], init) };
  };
  // MAE's predictor (the global variant's) is a Linear: Xavier weight, zero bias.
  const conv = (i: number): PredLayer => ({
    kind: 'conv',
    weight: param([F, i, 1, 1], mae ? xavier(F, i) : uniform(1 / Math.sqrt(i))),
    bias: param([F], mae ? fill(0) : uniform(1 / Math.sqrt(i))),
  });
  if (s === 4) return [deconv(d, d / 2), { kind: 'norm', ...normParams(d / 2) }, { kind: 'gelu' }, deconv(d / 2, d / 4), conv(d / 4)];
  if (s === 2) return [deconv(d, d / 2), conv(d / 2)];
  if (s === 1) return [conv(d)];
  return [{ kind: 'pool' }, conv(d)];
}

/** Decoder k of the pretraining model (docs/method.md#decoders-and-scales). */
export function decoderParams(c: ModelConfig, dims: ModelDims, k: number) {
  const { D, g, scales, F } = dims;
  const d = c.decoderDim;
  return {
    mask_token: param([1, 1, d], normal(0.02)),
    embed: linearParams(d, D),
    pos_embed: buffer([1, 1 + g * g, d], () => sinCosPosEmbed(d, g)),
    blocks: range(c.decoderDepth, () => blockParams(d, c.mlpRatio)),
    norm: normParams(d),
    pred: predParams(scales[k]!, d, F[k]!, c.variant === 'global'),
  };
}
export type DecoderParams = ReturnType<typeof decoderParams>;

/**
 * One per-scale decoder (docs/method.md#decoders-and-scales) with `heads` heads on a tapped latent `[B·(1+nKeep), D]`;
 * returns the prediction `[B, (s·g)², F]` in raster order over the scale's grid.
 */
export function decode(m: Tensors<DecoderParams>, latent: tf.Tensor, un: Unshuffle, heads: number): tf.Tensor {
  const [B, T, n] = un.select.shape as [number, number, number]; // T = 1 + L, n = 1 + nKeep
  const d = m.mask_token.shape[2]!;
  const g = Math.sqrt(T - 1);
  const x = tf.reshape(dense(m.embed, latent), [B, n, d]);
  // Un-shuffle as a one-hot matmul: tfjs's gather gradient is missing on wasm (docs/tfjs.md#kernels-missing-on-wasm).
  const full = tf.add(mm(un.select, x), tf.mul(un.mask, m.mask_token)); // [B, 1+L, d]
  let h: tf.Tensor = tf.reshape(tf.add(full, m.pos_embed), [B * T, d]);
  for (const blk of m.blocks) h = block(blk, h, { B, T }, { heads });
  h = norm(m.norm, h);
  const grid = tf.reshape(tf.slice(tf.reshape(h, [B, T, d]), [0, 1, 0], [B, T - 1, d]), [B, g, g, d]); // NHWC
  const out = rescale(m.pred, grid);
  return tf.reshape(out, [B, -1, out.shape[3]!]);
}

/** The rescaling head (×4, ×2, ×1, ×0.5) on `x [B, g, g, d]`, channels last. */
export function rescale(layers: Tensors<PredLayer>[], x: tf.Tensor): tf.Tensor {
  for (const l of layers) {
    if (l.kind === 'gelu') x = gelu(x);
    else if (l.kind === 'pool') x = avgPool2x2(x);
    else if (l.kind === 'norm') x = norm(l, x);
    else x = (l.kind === 'deconv' ? deconv2x2 : conv1x1)(x, l.weight, l.bias);
  }
  return x;
}

/**
 * ConvTranspose2d with k = s = 2 as one per-pixel matmul: input pixel (r, c) writes the 2×2 block at
 * (2r+a, 2c+b) with `W[cin, cout, a, b]`. One op on the tape that keeps only x and W. x: [B, h, w, cin] -> [B, 2h, 2w, cout].
 */
export function deconv2x2(x: tf.Tensor, W: tf.Tensor, bias: tf.Tensor): tf.Tensor {
  const [B, h, w, cin] = x.shape as [number, number, number, number];
  const cout = W.shape[1]!;
  const matrix = (W: tf.Tensor) => tf.reshape(tf.transpose(W, [0, 2, 3, 1]), [cin, 4 * cout]); // [cin, (a, b, cout)]
  // Pixel rows (r, c) with columns (a, b, cout) <-> output rows (r, a) with columns (c, b, cout).
  const interleave = (y: tf.Tensor, from: number[], to: number[]) => tf.reshape(tf.transpose(tf.reshape(y, from), [0, 2, 1, 3]), to);
  const op = customGrad((x: tf.Tensor, W: tf.Tensor, bias: tf.Tensor, save: tf.GradSaveFunc) => {
    save([x, W]);
    const y = matMulT(tf.reshape(x, [-1, cin]), matrix(W), false, false);
    return {
      value: tf.add(interleave(y, [B * h, w, 2, 2 * cout], [B, 2 * h, 2 * w, cout]), bias),
      gradFunc: (dy: tf.Tensor, [sx, sW]: tf.Tensor[]) => {
        const dY = interleave(dy, [B * h, 2, w, 2 * cout], [B * h * w, 4 * cout]);
        const dW = tf.reshape(matMulT(tf.reshape(sx!, [-1, cin]), dY, true, false), [cin, 2, 2, cout]);
        return [tf.reshape(matMulT(dY, matrix(sW!), false, true), x.shape), tf.transpose(dW, [0, 3, 1, 2]), columnSum(dy)];
      },
    };
  }) as (x: tf.Tensor, W: tf.Tensor, bias: tf.Tensor) => tf.Tensor;
  return op(x, W, bias);
}

/** 1×1 Conv2d `W [cout, cin, 1, 1]` as a Linear over pixels. x: [B, h, w, cin] -> [B, h, w, cout]. */
function conv1x1(x: tf.Tensor, W: tf.Tensor, bias: tf.Tensor): tf.Tensor {
  const [B, h, w, cin] = x.shape as number[];
  const y = linear(tf.reshape(x, [-1, cin!]), tf.reshape(W, [W.shape[0]!, cin!]), bias);
  return tf.reshape(y, [B!, h!, w!, -1]);
}

/** AvgPool2d(2, 2). x: [B, h, w, d] -> [B, h/2, w/2, d]. */
function avgPool2x2(x: tf.Tensor): tf.Tensor {
  const [B, h, w, d] = x.shape as number[];
  const rows = tf.mean(tf.reshape(x, [B! * (h! / 2), 2, w! / 2, 2 * d!]), 1); // [B·h/2, w/2, (b, d)]
  return tf.reshape(tf.mean(tf.reshape(rows, [-1, 2, d!]), 1), [B!, h! / 2, w! / 2, d!]);
}
