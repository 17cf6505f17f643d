import * as tf from '@tensorflow/tfjs';
import { afterAll, expect, test } from 'vitest';
import { setFreeingBackprop } from '../core/backprop.js';
import { customGrad } from '../core/model/ops.js';
import { Rng } from '../core/random.js';
import './support/setup.js';

// core/backprop.ts replaces tfjs's Engine.gradients, relying on the engine's private tape. These fail if a tfjs
// upgrade changes what it reads (wrong or missing gradients, or nothing freed any more).

afterAll(() => setFreeingBackprop(true));

const rng = new Rng(4);
const random = (shape: number[]) =>
  tf.tensor(
    Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => rng.normal()),
    shape,
  );

// A custom op whose gradient is its upstream gradient itself: the same tensor object lands under two ids.
const passThrough = customGrad((x: tf.Tensor) => ({ value: tf.mul(x, 1), gradFunc: (dy: tf.Tensor) => dy })) as (x: tf.Tensor) => tf.Tensor;

/** Reuses inputs and intermediates, leaves an output of a split unused, and goes through a custom gradient. */
function tangled(a: tf.Tensor, b: tf.Tensor): tf.Scalar {
  const h = tf.tanh(tf.matMul(a, b));
  const [left, right] = tf.split(tf.add(h, h), 2, 1);
  const unused = tf.split(tf.mul(h, a), [1, 5], 1)[1]!;
  const mixed = tf.add(tf.mul(passThrough(left!), right!), tf.sum(unused, 1, true));
  const probs = tf.softmax(mixed);
  const loss = tf.sum(tf.mul(tf.concat([probs, probs], 1), tf.add(a, passThrough(tf.sigmoid(a)))));
  return tf.add(loss, tf.sum(passThrough(b))); // b's gradient is the very tensor of passThrough's output
}

test('the freeing backward pass gives tfjs’s own gradients and frees everything it made', () => {
  const [a, b] = [random([4, 6]), random([6, 6])];
  const run = (freeing: boolean) => {
    setFreeingBackprop(freeing);
    const before = tf.memory().numTensors;
    const { value, grads } = tf.tidy(() => tf.valueAndGrads(tangled)([a, b]));
    const out = [value, ...grads].map((t) => t.dataSync().slice());
    tf.dispose([value, ...grads]);
    expect(tf.memory().numTensors).toBe(before);
    return out;
  };
  const [ours, theirs] = [run(true), run(false)];
  for (const [i, want] of theirs.entries()) expect([...ours[i]!], `output ${i}`).toEqual([...want]);
  tf.dispose([a, b]);
});

test('it frees gradients and saved tensors as it goes: by the end of a long chain it holds a fraction of tfjs’s own', async () => {
  const x = random([256, 256]);
  const chain = (v: tf.Tensor) => {
    let y = v;
    for (let i = 0; i < 24; i++) y = tf.tanh(tf.mul(y, 1.01));
    return tf.sum(y);
  };
  // Bytes in use when the last kernel of the backward pass runs, before anything is returned.
  const held = async (freeing: boolean) => {
    setFreeingBackprop(freeing);
    const info = await tf.profile(() => {
      const g = tf.grad(chain)(x);
      g.dispose();
    });
    return info.kernels.at(-1)!.totalBytesSnapshot as number;
  };
  const [ours, theirs] = [await held(true), await held(false)];
  expect(ours).toBeLessThan(theirs * 0.25);
  x.dispose();
});
