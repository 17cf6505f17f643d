import * as tf from '@tensorflow/tfjs';
import { afterAll, expect, test } from 'vitest';
import { deconv2x2 } from '../core/model/decoder.js';
import { linear, multiHeadAttention } from '../core/model/ops.js';
import { nativeActive, setNativeGemm } from '../core/native.js';
import { Rng } from '../core/random.js';
import { backend } from './support/setup.js';

// The custom ops keep only their inputs for the backward pass and bring their own gradients (native kernels when the
// addon is on, tfjs ops otherwise). Both must equal tfjs's own autodiff of the same computation written plainly.

const native = backend.chosen === 'wasm' && nativeActive();
afterAll(() => void (native && setNativeGemm(true)));

const rng = new Rng(11);
const random = (shape: number[]) =>
  tf.tensor(
    Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => rng.normal()),
    shape,
  );

function plainAttention(qkv: tf.Tensor, B: number, T: number, heads: number, bias?: tf.Tensor): tf.Tensor {
  const hd = qkv.shape[1]! / 3 / heads;
  const [q, k, v] = tf.unstack(tf.transpose(tf.reshape(qkv, [B, T, 3, heads, hd]), [2, 0, 1, 3, 4])); // [B, T, H, hd]
  const perHead = (t: tf.Tensor) => tf.reshape(tf.transpose(t!, [0, 2, 1, 3]), [B * heads, T, hd]);
  let scores = tf.mul(tf.matMul(perHead(q!), perHead(k!), false, true), hd ** -0.5); // [B·H, T, T]
  if (bias) scores = tf.reshape(tf.add(tf.reshape(scores, [B / bias.shape[0]!, -1, T, T]), tf.reshape(bias, [-1, T, T])), scores.shape);
  const probs = tf.softmax(scores);
  return tf.reshape(tf.transpose(tf.reshape(tf.matMul(probs, perHead(v!)), [B, heads, T, hd]), [0, 2, 1, 3]), [B * T, heads * hd]);
}

function plainDeconv(x: tf.Tensor, W: tf.Tensor, bias: tf.Tensor): tf.Tensor {
  const [B, h, w, cin] = x.shape as number[];
  const cout = W.shape[1]!;
  const y = tf.matMul(tf.reshape(x, [-1, cin!]), tf.reshape(tf.transpose(W, [0, 2, 3, 1]), [cin!, 4 * cout]));
  return tf.add(tf.reshape(tf.transpose(tf.reshape(y, [B! * h!, w!, 2, 2 * cout]), [0, 2, 1, 3]), [B!, 2 * h!, 2 * w!, cout]), bias);
}

const cases: [string, number[][], (...xs: tf.Tensor[]) => tf.Tensor, (...xs: tf.Tensor[]) => tf.Tensor][] = [
  ['attention', [[3 * 7, 3 * 24]], (qkv) => multiHeadAttention(qkv!, { B: 3, T: 7 }, { heads: 4 }), (qkv) => plainAttention(qkv!, 3, 7, 4)],
  [
    'attention with a bias shared by every other sequence',
    [
      [4 * 5, 3 * 8],
      [2, 2, 5, 5],
    ],
    (qkv, bias) => multiHeadAttention(qkv!, { B: 4, T: 5 }, { heads: 2, bias }),
    (qkv, bias) => plainAttention(qkv!, 4, 5, 2, bias),
  ],
  ['linear', [[10, 6], [5, 6], [5]], (x, W, b) => linear(x!, W!, b), (x, W, b) => tf.add(tf.matMul(x!, W!, false, true), b!)],
  ['2×2 transposed conv', [[2, 3, 4, 6], [6, 5, 2, 2], [5]], deconv2x2 as never, plainDeconv as never],
];

for (const withNative of native ? [true, false] : [false])
  for (const [name, shapes, op, plain] of cases)
    test(`${name}: value and gradients equal tfjs autodiff of the plain ops${withNative ? ' (native kernels)' : ''}`, () => {
      if (native) setNativeGemm(withNative);
      const inputs = shapes.map(random);
      const y = plain(...inputs);
      const upstream = random(y.shape);
      const grads = (f: (...xs: tf.Tensor[]) => tf.Tensor) => tf.grads((...xs: tf.Tensor[]) => tf.sum(tf.mul(f(...xs), upstream)))(inputs);
      expect(maxRelative(op(...inputs), y)).toBeLessThan(1e-5);
      const [got, want] = [grads(op), grads(plain)];
      for (const [i, g] of got.entries()) expect(maxRelative(g, want[i]!), `input ${i}`).toBeLessThan(1e-5);
      tf.dispose([...inputs, y, upstream, ...got, ...want]);
    });

function maxRelative(a: tf.Tensor, b: tf.Tensor): number {
  expect(a.shape).toEqual(b.shape);
  const [x, y] = [a.dataSync(), b.dataSync()];
  let [diff, norm] = [0, 0];
  for (let i = 0; i < y.length; i++) [diff, norm] = [Math.max(diff, Math.abs(x[i]! - y[i]!)), Math.max(norm, Math.abs(y[i]!))];
  return diff / norm;
}
