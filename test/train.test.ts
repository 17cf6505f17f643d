import * as tf from '@tensorflow/tfjs';
import { describe, expect, test } from 'vitest';
import { parseRunConfig, type RunConfigInput } from '../core/config.js';
import { LocalMIM } from '../core/model/localmim.js';
import { Rng } from '../core/random.js';
import { NonFiniteLossError, TrainStep } from '../core/train/step.js';
import { syntheticImages } from './images.js';
import './setup.js';

// Long synchronous tfjs work starves the test runner's RPC; give it a turn between steps.
const yieldToRunner = () => new Promise((resolve) => setImmediate(resolve));

const tiny = { imgSize: 32, patchSize: 8, D: 32, depth: 8, heads: 2, decoderDim: 16, decoderHeads: 2 };

function setup(input: RunConfigInput, B: number, seed = 0) {
  const cfg = parseRunConfig(input);
  const model = new LocalMIM(cfg.model, seed);
  const trainer = new TrainStep(model, cfg.optim);
  const images = syntheticImages(B, cfg.model.imgSize, seed + 1);
  const rng = new Rng(seed + 2);
  const batch = () => model.prepare(images, rng.fill(B * model.dims.L));
  const dispose = () => {
    trainer.dispose();
    model.dispose();
  };
  return { cfg, model, trainer, batch, dispose };
}

test('a training step leaves tf.memory().numTensors flat', async () => {
  const { trainer, batch, dispose } = setup({ model: tiny, optim: { accumIter: 2 } }, 2);
  const counts: number[] = [];
  for (let step = 1; step <= 50; step++) {
    await trainer.run([batch(), batch()], 1e-3);
    counts[step] = tf.memory().numTensors;
    await yieldToRunner();
  }
  expect(counts[50]).toBe(counts[2]);
  dispose();
});

describe('variants', () => {
  test.each(['local', 'isolated'] as const)('%s: gradient of the top-scale loss reaching block 0', (variant) => {
    const { model, batch, dispose } = setup({ model: { ...tiny, variant } }, 2);
    const b = batch();
    const block0 = [...model.params.vars].filter(([name]) => name.startsWith('blocks.0.')).map(([, v]) => v);
    const { value, grads } = tf.variableGrads(() => model.forward(b).losses[3]!, block0);
    const norm = tf.tidy(() => tf.addN(Object.values(grads).map((g) => tf.sum(tf.abs(g)))).dataSync()[0]!);
    if (variant === 'isolated') expect(norm).toBe(0);
    else expect(norm).toBeGreaterThan(1e-6);
    tf.dispose([value, ...Object.values(grads)]);
    dispose();
  });

  test.each([
    ['global', [7, 7, 7, 7]],
    ['local', [1, 3, 5, 7]],
  ] as const)('%s with scales [4, 2, 1, 0.5]: the deepest block scale k’s loss reaches is %j', (variant, taps) => {
    const { model, batch, dispose } = setup({ model: { ...tiny, variant, scales: [4, 2, 1, 0.5] } }, 2);
    expect(model.dims.taps).toEqual(taps);
    const b = batch();
    const encoder = [...model.params.vars].filter(([name]) => name.startsWith('blocks.')).map(([, v]) => v);
    const deepest = taps.map((_, k) => {
      const { value, grads } = tf.variableGrads(() => model.forward(b).losses[k]!, encoder);
      const reached = Object.entries(grads)
        .filter(([, g]) => tf.tidy(() => tf.sum(tf.abs(g)).dataSync()[0]!) > 0)
        .map(([name]) => Number(/blocks\.(\d+)\./.exec(name)![1]));
      tf.dispose([value, ...Object.values(grads)]);
      return Math.max(...reached);
    });
    expect(deepest).toEqual(taps);
    dispose();
  });

  test.each([
    [{ variant: 'global', target: 'hog' }, [[2, 16, 27]]],
    [{ variant: 'global', target: 'pixel' }, [[2, 16, 192]]],
    [
      { variant: 'local', target: 'pixel' },
      [
        [2, 256, 12],
        [2, 64, 48],
        [2, 16, 192],
        [2, 4, 768],
      ],
    ],
    [
      { variant: 'local', target: 'hog', nbins: 18, hogBias: true },
      [
        [2, 256, 54],
        [2, 64, 54],
        [2, 16, 54],
        [2, 4, 54],
      ],
    ],
  ] as const)('%o predicts %j and trains', async (variant, shapes) => {
    const { model, trainer, batch, dispose } = setup({ model: { ...tiny, ...variant } }, 2);
    const b = batch();
    const predicted = tf.tidy(() => model.forward(b).preds.map((p) => p.shape));
    expect(predicted).toEqual(shapes);
    expect(b.targets.map((t) => t.length)).toEqual(shapes.map((s) => s[0] * s[1] * s[2]));
    expect(Number.isFinite((await trainer.run([b], 1e-3)).loss)).toBe(true);
    dispose();
  });
});

test('vit-base at 224 predicts 56², 28², 14² and 7² tokens of 27 HOG features', async () => {
  const { model, batch, dispose } = setup({ model: { size: 'vit-base' } }, 1);
  await yieldToRunner();
  const shapes = tf.tidy(() => model.forward(batch()).preds.map((p) => p.shape));
  expect(shapes).toEqual([
    [1, 56 * 56, 27],
    [1, 28 * 28, 27],
    [1, 14 * 14, 27],
    [1, 7 * 7, 27],
  ]);
  dispose();
});

test('vit-tiny at 64 px overfits one fixed batch: loss halves within 40 steps', async () => {
  const { model, trainer, dispose } = setup({ model: { imgSize: 64, patchSize: 8 } }, 8);
  const images = syntheticImages(8, 64, 7);
  const fixed = model.prepare(images, new Rng(3).fill(8 * model.dims.L));
  const losses: number[] = [];
  for (let step = 0; step < 40; step++) {
    losses.push((await trainer.run([fixed], 1e-3)).loss);
    await yieldToRunner();
  }
  expect(Math.min(...losses.slice(-5))).toBeLessThan(0.5 * losses[0]!);
  dispose();
});

test('a non-finite loss stops the step with a clear error and keeps the weights', async () => {
  const { model, trainer, batch, dispose } = setup({ model: tiny }, 2);
  await trainer.run([batch()], 1e-3);
  const before = model.params.get('blocks.0.attn.qkv.weight').dataSync().slice();
  const poisoned = batch();
  poisoned.patches.fill(NaN);
  await expect(trainer.run([poisoned], 1e-3)).rejects.toThrow(NonFiniteLossError);
  await expect(trainer.run([poisoned], 1e-3)).rejects.toThrow(/loss is not finite at optimizer step 2/);
  expect(model.params.get('blocks.0.attn.qkv.weight').dataSync()).toEqual(before);
  dispose();
});
