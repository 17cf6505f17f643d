import * as tf from '@tensorflow/tfjs';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { parseRunConfig, type RunConfigInput } from '../core/config.js';
import { disposeBatch, LocalMIM, type PreparedBatch } from '../core/model/localmim.js';
import { Rng } from '../core/random.js';
import { loadCheckpoint } from '../core/train/checkpoint.js';
import { DivergedError, NonFiniteLossError, train, type Task, type TrainEvent } from '../core/train/loop.js';
import { TrainStep } from '../core/train/step.js';
import { syntheticImages } from './support/images.js';
import './support/setup.js';

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
  /** One optimizer step; its total loss, read back. */
  const step = async (batches: PreparedBatch[], lr = 1e-3) => {
    const out = trainer.run(batches, lr);
    const [loss] = await out.data();
    out.dispose();
    return loss!;
  };
  return { cfg, model, trainer, batch, step, dispose };
}

test('a training step leaves tf.memory().numTensors flat', async () => {
  const { batch, step, dispose } = setup({ model: tiny, optim: { accumIter: 2 } }, 2);
  const counts: number[] = [];
  for (let i = 1; i <= 50; i++) {
    const batches = [batch(), batch()];
    await step(batches);
    batches.forEach(disposeBatch);
    counts[i] = tf.memory().numTensors;
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
    const { model, batch, step, dispose } = setup({ model: { ...tiny, ...variant } }, 2);
    const b = batch();
    const predicted = tf.tidy(() => model.forward(b).preds.map((p) => p.shape));
    expect(predicted).toEqual(shapes);
    expect(b.targets.map((t) => t.shape)).toEqual(shapes);
    expect(Number.isFinite(await step([b]))).toBe(true);
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
  const { model, step, dispose } = setup({ model: { imgSize: 64, patchSize: 8 } }, 8);
  const images = syntheticImages(8, 64, 7);
  const fixed = model.prepare(images, new Rng(3).fill(8 * model.dims.L));
  const losses: number[] = [];
  for (let i = 0; i < 40; i++) {
    losses.push(await step([fixed]));
    await yieldToRunner();
  }
  expect(Math.min(...losses.slice(-5))).toBeLessThan(0.5 * losses[0]!);
  dispose();
});

describe('the loop reads losses back every few steps', () => {
  const dir = mkdtempSync(join(tmpdir(), 'localmim-loop-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** A 6-step run on fixed batches whose step `poisonAt` (1-based) has NaN inputs; its step events, or the error. */
  async function run(readEvery: number, poisonAt?: number, everySteps?: number) {
    const { cfg, model, trainer, batch } = setup({ model: tiny, optim: { epochs: 1, warmupEpochs: 0 } }, 2, 3);
    const batches = Array.from({ length: 6 }, batch);
    const poisoned = { ...batches[0]!, patches: tf.fill(batches[0]!.patches.shape, NaN) as tf.Tensor2D };
    const task: Task = {
      model,
      optimizer: trainer.optimizer,
      config: cfg,
      optim: cfg.optim,
      batchesPerEpoch: 6,
      step: async (_e, j) => trainer.run([j + 1 === poisonAt ? poisoned : batches[j]!], 1e-3),
      dispose: () => {
        batches.forEach(disposeBatch);
        poisoned.patches.dispose();
        trainer.dispose();
        model.dispose();
      },
    };
    const events: TrainEvent[] = [];
    const home = mkdtempSync(join(dir, 'run-'));
    const before = tf.memory().numTensors;
    const out = await train(task, {
      backend: 'test',
      readEvery,
      checkpointPath: (s) => join(home, `${s}.safetensors`),
      cadence: { everySteps },
      onEvent: (e) => events.push(e),
    }).catch((e: Error) => e);
    expect(tf.memory().numTensors).toBeLessThanOrEqual(before);
    return { out, steps: events.filter((e) => e.type === 'step'), checkpoints: events.filter((e) => e.type === 'checkpoint') };
  }

  test('every step is reported in order with its own loss, the same as reading each step', async () => {
    const each = await run(1);
    const batched = await run(4);
    expect(batched.steps.map((e) => e.step)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(batched.steps).toEqual(each.steps.map((e, i) => ({ ...e, imagesPerS: batched.steps[i]!.imagesPerS })));
    expect(batched.checkpoints.map((e) => e.step)).toEqual([6]);
  });

  test('a non-finite loss found at a readback stops the run naming its step; no checkpoint holds its weights', async () => {
    const { out, steps, checkpoints } = await run(4, 3, 2);
    expect(out).toBeInstanceOf(NonFiniteLossError);
    expect((out as Error).message).toMatch(/loss is not finite at optimizer step 3 \(per-scale losses NaN, NaN, NaN, NaN\)/);
    expect(steps.map((e) => e.step)).toEqual([1, 2]);
    expect(checkpoints.map((e) => e.step)).toEqual([2]);
    const saved = loadCheckpoint((checkpoints[0] as { path: string }).path);
    expect([...saved.tensors.values()].every((t) => t.values.every(Number.isFinite))).toBe(true);
  });
});

describe('a finite divergence stops the run like a NaN, before it is checkpointed', () => {
  const dir = mkdtempSync(join(tmpdir(), 'localmim-diverge-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** A 14-step run checkpointing every 4 steps, reading back every 4; `spoil` runs after each step's update. */
  async function run(spoil: (step: number, values: tf.Tensor1D, params: Map<string, tf.Variable>) => tf.Tensor1D) {
    const { cfg, model, trainer, batch } = setup({ model: tiny, optim: { epochs: 1, warmupEpochs: 0 } }, 2, 3);
    const fixed = batch();
    const task: Task = {
      model,
      optimizer: trainer.optimizer,
      config: cfg,
      optim: cfg.optim,
      batchesPerEpoch: 14,
      step: async (_e, _j, step) => spoil(step + 1, trainer.run([fixed], 1e-3), model.params.vars),
      dispose: () => {
        disposeBatch(fixed);
        trainer.dispose();
        model.dispose();
      },
    };
    const events: TrainEvent[] = [];
    const home = mkdtempSync(join(dir, 'run-'));
    const before = tf.memory().numTensors;
    const out = await train(task, {
      backend: 'test',
      readEvery: 4,
      checkpointPath: (s) => join(home, `${s}.safetensors`),
      cadence: { everySteps: 4 },
      onEvent: (e) => events.push(e),
    }).catch((e: Error) => e);
    expect(tf.memory().numTensors).toBeLessThanOrEqual(before);
    return {
      out,
      steps: events.filter((e) => e.type === 'step').map((e) => e.step),
      checkpoints: events.filter((e) => e.type === 'checkpoint').map((e) => e.step),
    };
  }

  test('a loss 1000× the recent median at step 12 stops it there: no checkpoint at 12', async () => {
    const { out, steps, checkpoints } = await run((step, values) => {
      if (step !== 12) return values;
      const spoiled = values.mul(1000) as tf.Tensor1D;
      values.dispose();
      return spoiled;
    });
    expect(out).toBeInstanceOf(DivergedError);
    expect(out).not.toBeInstanceOf(NonFiniteLossError);
    expect((out as Error).message).toMatch(
      /^loss diverged at optimizer step 12: [\d.e+]+, over 100× the median [\d.]+ of the last 11 steps; stopped without saving$/,
    );
    expect(steps).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    expect(checkpoints).toEqual([4, 8]);
  });

  test('a weight past 1e6 stops it at the checkpoint that would hold it, naming the tensor', async () => {
    let name = '';
    const { out, steps, checkpoints } = await run((step, values, params) => {
      if (step === 8) {
        const [first, v] = [...params][0]!;
        name = first;
        v.assign(tf.fill(v.shape, 1e7));
      }
      return values;
    });
    expect(out).toBeInstanceOf(DivergedError);
    expect((out as Error).message).toBe(
      `weights diverged by optimizer step 8: ${name} reaches magnitude 1.0e+7, past 1000000; stopped without saving`,
    );
    expect(steps).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(checkpoints).toEqual([4]);
  });
});
