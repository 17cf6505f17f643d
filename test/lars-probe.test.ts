import * as tf from '@tensorflow/tfjs';
import { expect, test } from 'vitest';
import { ConfigError, FinetuneConfigSchema, parseConfig } from '../core/config.js';
import { foldProbeHead } from '../core/export/backbone.js';
import { PROBE_EPS } from '../core/model/classifier.js';
import { batchNorm, linear } from '../core/model/ops.js';
import { LARS } from '../core/train/lars.js';
import './support/setup.js';

const close = (actual: ArrayLike<number>, expected: number[], digits = 6) =>
  expected.forEach((e, i) => expect(actual[i], `[${i}]`).toBeCloseTo(e, digits));

function lars(weightDecay: number, W: number[], b: number[]) {
  const vars = new Map<string, tf.Variable>([
    ['head.weight', tf.variable(tf.tensor2d([W]), true, `lars-w-${weightDecay}-${W}`)],
    ['head.bias', tf.variable(tf.tensor1d(b), true, `lars-b-${weightDecay}-${W}`)],
  ]);
  const opt = new LARS(vars, { weightDecay, momentum: 0.9, trust: 0.001 });
  const step = (gW: number[], gb: number[], lr: number) => {
    const grads = { [vars.get('head.weight')!.name]: tf.tensor2d([gW]), [vars.get('head.bias')!.name]: tf.tensor1d(gb) };
    opt.apply(grads, lr);
    tf.dispose(Object.values(grads));
    return { W: vars.get('head.weight')!.dataSync(), b: vars.get('head.bias')!.dataSync(), mu: opt.mu.get('head.weight')!.dataSync() };
  };
  return { step, dispose: () => (opt.dispose(), tf.dispose([...vars.values()])) };
}

test('LARS: the trust ratio scales matrices only, then momentum; its update equals the formula', () => {
  // W = [3, 4] (‖W‖ = 5), g = [0.6, 0.8] (‖g‖ = 1), lr 0.1, no weight decay.
  const a = lars(0, [3, 4], [1]);
  let r = a.step([0.6, 0.8], [0.5], 0.1);
  // q = 0.001·5/1 = 0.005: μ = [0.003, 0.004], W − 0.1·μ. The bias is 1-D: μ = 0.5, b = 1 − 0.05.
  close(r.mu, [0.003, 0.004], 8);
  close(r.W, [3 - 0.0003, 4 - 0.0004]);
  close(r.b, [0.95]);
  r = a.step([0.6, 0.8], [0.5], 0.1);
  // W is now 0.9999·[3, 4]: ‖W‖ = 4.9995, q = 0.0049995; μ = 0.9·[0.003, 0.004] + q·[0.6, 0.8].
  const mu = [0.9 * 0.003 + 0.0049995 * 0.6, 0.9 * 0.004 + 0.0049995 * 0.8];
  close(r.mu, mu, 8);
  close(r.W, [2.9997 - 0.1 * mu[0]!, 3.9996 - 0.1 * mu[1]!]);
  close(r.b, [0.95 - 0.1 * (0.9 * 0.5 + 0.5)]);
  a.dispose();

  // Weight decay joins the matrix's gradient before the ratio: g + 0.1·W = [0.9, 1.2], norm 1.5, q = 0.001·5/1.5.
  const d = lars(0.1, [3, 4], [1]);
  r = d.step([0.6, 0.8], [0.5], 1);
  close(r.W, [3 - (0.9 * 0.005) / 1.5, 4 - (1.2 * 0.005) / 1.5]);
  close(r.b, [0.5]); // no decay, no ratio on the bias
  d.dispose();

  // A zero matrix has no trust ratio (q = 1): the plain gradient step.
  const z = lars(0, [0, 0], [0]);
  close(z.step([0.6, 0.8], [0], 0.1).W, [-0.06, -0.08]);
  z.dispose();
});

test('BatchNorm without affine: batch statistics in training (moving the running ones), running ones in evaluation', () => {
  const running = { mean: tf.variable(tf.tensor1d([0, 0]), false), variance: tf.variable(tf.tensor1d([1, 1]), false) };
  const x = tf.tensor2d([
    [1, 2],
    [3, 6],
    [5, 1],
  ]);
  // Columns: mean [3, 3]; biased variance [(4 + 0 + 4)/3, (1 + 9 + 4)/3] = [8/3, 14/3]; unbiased [4, 7].
  const train = tf.tidy(() => batchNorm(x, running, true, PROBE_EPS).arraySync()) as number[][];
  const sd = [Math.sqrt(8 / 3 + 1e-6), Math.sqrt(14 / 3 + 1e-6)];
  close(train.flat(), [-2 / sd[0]!, -1 / sd[1]!, 0, 3 / sd[1]!, 2 / sd[0]!, -2 / sd[1]!]);
  close(running.mean.dataSync(), [0.3, 0.3]);
  close(running.variance.dataSync(), [0.9 + 0.4, 0.9 + 0.7]);
  const evaluated = tf.tidy(() => batchNorm(x, running, false, PROBE_EPS).arraySync()) as number[][];
  const rsd = [Math.sqrt(1.3 + 1e-6), Math.sqrt(1.6 + 1e-6)];
  close(evaluated.flat(), [0.7 / rsd[0]!, 1.7 / rsd[1]!, 2.7 / rsd[0]!, 5.7 / rsd[1]!, 4.7 / rsd[0]!, 0.7 / rsd[1]!]);
  close(running.mean.dataSync(), [0.3, 0.3]); // evaluation leaves them
  tf.dispose([x, running.mean, running.variance]);
});

test("an export folds the probe's BatchNorm into timm's plain head: same scores", () => {
  const [B, D, K] = [4, 3, 2];
  const x = tf.randomNormal([B, D], 0, 2, 'float32', 1);
  const values = (shape: number[], seed: number, shift = 0) => ({
    shape,
    values: tf.tidy(() => tf.add(tf.randomUniform(shape, 0.5, 1.5, 'float32', seed), shift).dataSync() as Float32Array),
  });
  const tensors = new Map([
    ['head.0.running_mean', values([D], 2, -1)],
    ['head.0.running_var', values([D], 3)],
    ['head.1.weight', values([K, D], 4, -1)],
    ['head.1.bias', values([K], 5, -1)],
  ]);
  const t = (name: string) => tf.tensor(tensors.get(name)!.values, tensors.get(name)!.shape);
  const running = { mean: tf.variable(t('head.0.running_mean'), false), variance: tf.variable(t('head.0.running_var'), false) };
  const probe = tf.tidy(() => linear(batchNorm(x, running, false, PROBE_EPS), t('head.1.weight'), t('head.1.bias')).dataSync());
  foldProbeHead(tensors);
  expect([...tensors.keys()].sort()).toEqual(['head.bias', 'head.weight']);
  const folded = tf.tidy(() => linear(x, t('head.weight'), t('head.bias')).dataSync());
  close(folded, [...probe], 5);
  tf.dispose([x, running.mean, running.variance]);
});

test("a linear probe's config: MAE's defaults, crops and flips only, BatchNorm needs two images", () => {
  expect(parseConfig(FinetuneConfigSchema, { linearProbe: true, epochs: 3 })).toMatchObject({
    epochs: 3,
    warmupEpochs: 10,
    blr: 0.1,
    minLr: 0,
    weightDecay: 0,
    smoothing: 0,
    mixup: 0,
    cutmix: 0,
    randAugment: null,
    reprob: 0,
    minScale: 0.08,
  });
  expect(parseConfig(FinetuneConfigSchema, {})).toMatchObject({ blr: 1e-3, smoothing: 0.1, weightDecay: 0.05, mixup: 0.8, reprob: 0.25 });
  const problems = (input: unknown) => {
    try {
      parseConfig(FinetuneConfigSchema, input);
    } catch (err) {
      if (err instanceof ConfigError) return err.problems;
      throw err;
    }
    return [];
  };
  expect(problems({ linearProbe: true, mixup: 0.8 })).toEqual([expect.stringMatching(/^mixup: .*crops and flips/)]);
  expect(problems({ linearProbe: true, smoothing: 0.1 })).toEqual([expect.stringMatching(/^smoothing: /)]);
  expect(problems({ linearProbe: true, batch: 1 })).toEqual([expect.stringMatching(/^batch: .*at least 2/)]);
  expect(problems({ linearProbe: true, reprob: 0.25 })).toEqual([expect.stringMatching(/^reprob: .*crops and flips/)]);
  expect(problems({ linearProbe: true, randAugment: 'rand-m9-mstd0.5-inc1' })).toEqual([
    expect.stringMatching(/^randAugment: .*crops and flips/),
  ]);
  expect(parseConfig(FinetuneConfigSchema, { linearProbe: true })).toMatchObject({ probeRecipe: 'logistic', probeFeatures: 'last' });
  expect(problems({ linearProbe: true, probeRecipe: 'lars', probeFeatures: 'last4' })).toEqual([
    expect.stringMatching(/^probeFeatures: .*logistic/),
  ]);
  expect(problems({ probeFeatures: 'last4' })).toEqual([expect.stringMatching(/^probeFeatures: /)]);
  expect(problems({ linearProbe: true, probeRecipe: 'sgd' })).toEqual([expect.stringMatching(/^probeRecipe: /)]);
});
