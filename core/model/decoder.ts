import * as tf from '@tensorflow/tfjs';
import type { ModelConfig, ModelDims } from '../config.js';
import { columnSum, customGrad, gelu, layerNorm, linear, matMulT, mm } from './ops.js';
import { HEADS } from './params.js';
import { block, type Param } from './vit.js';

/**
 * Where the class token and the visible tokens go back in the full sequence: `select [B, 1+L, 1+nKeep]` one-hot, and
 * `mask [B, 1+L, 1]`, 1 where a patch was removed (the class token's row 0 keeps itself and is never masked).
 */
export interface Unshuffle {
  select: tf.Tensor;
  mask: tf.Tensor;
}

/**
 * One per-scale decoder (docs/method.md#decoders-and-scales) on a tapped latent `[B·(1+nKeep), D]`; returns the prediction
 * `[B, (s·g)², F]` in raster order over the scale's grid.
 */
export function decode(P: Param, k: number, c: ModelConfig, dims: ModelDims, latent: tf.Tensor, un: Unshuffle, B: number): tf.Tensor {
  const { g, L, nKeep } = dims;
  const d = c.decoderDim;
  const dec = `decoder.${k}`;
  const x = tf.reshape(linear(latent, P(`${dec}.embed.weight`), P(`${dec}.embed.bias`)), [B, 1 + nKeep, d]);
  // Un-shuffle as a one-hot matmul: tfjs's gather gradient is missing on wasm (docs/tfjs.md#kernels-missing-on-wasm).
  const full = tf.add(mm(un.select, x), tf.mul(un.mask, P(`${dec}.mask_token`))); // [B, 1+L, d]
  let h: tf.Tensor = tf.add(full, P(`${dec}.pos_embed`));
  h = tf.reshape(h, [B * (1 + L), d]);
  for (let i = 0; i < c.decoderDepth; i++) h = block(P, `${dec}.blocks.${i}`, h, B, 1 + L, c.decoderHeads);
  h = layerNorm(h, P(`${dec}.norm.weight`), P(`${dec}.norm.bias`));
  const grid = tf.reshape(tf.slice(tf.reshape(h, [B, 1 + L, d]), [0, 1, 0], [B, L, d]), [B, g, g, d]); // NHWC
  const out = rescale(P, `${dec}.pred`, dims.scales[k]!, d, grid);
  return tf.reshape(out, [B, -1, out.shape[3]!]);
}

/** The rescaling head (×4, ×2, ×1, ×0.5) on `x [B, g, g, d]`, channels last. */
function rescale(P: Param, name: string, s: number, d: number, x: tf.Tensor): tf.Tensor {
  for (const layer of HEADS[s]!(d)) {
    const at = `${name}.${layer.index}`;
    if (layer.kind === 'deconv') x = deconv2x2(x, P(`${at}.weight`), P(`${at}.bias`));
    else if (layer.kind === 'norm') x = layerNorm(x, P(`${at}.weight`), P(`${at}.bias`));
    else if (layer.kind === 'gelu') x = gelu(x);
    else if (layer.kind === 'pool') x = avgPool2x2(x);
    else x = conv1x1(x, P(`${at}.weight`), P(`${at}.bias`));
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
