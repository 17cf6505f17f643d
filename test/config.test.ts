import { describe, expect, test } from 'vitest';
import { ConfigError, modelDims, parseRunConfig, peakLr } from '../core/config.js';
import { newRunConfig, PRESETS, presetStarts } from '../core/presets.js';
import { decays } from '../core/model/module.js';
import { lrAt } from '../core/train/schedule.js';

function problems(input: unknown): string[] {
  try {
    parseRunConfig(input);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}

describe('config', () => {
  test('defaults are the paper’s: ViT, patch 16 at 224, taps [1, 3, depth−3, depth−1], cells 4/8/16/32', () => {
    const c = parseRunConfig({});
    expect(c.model).toMatchObject({
      imgSize: 224,
      patchSize: 16,
      maskRatio: 0.75,
      nbins: 9,
      decoderDim: 256,
      decoderHeads: 8,
      variant: 'local',
    });
    expect(modelDims(c.model)).toMatchObject({ taps: [1, 3, 9, 11], scales: [4, 2, 1, 0.5], cells: [4, 8, 16, 32], nKeep: 49, L: 196 });
    expect(c.optim).toMatchObject({ beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.05, minLr: 1e-6 });
  });

  test('HOG cells follow the patch size: p = 8 gives 2/4/8/16', () => {
    expect(modelDims(parseRunConfig({ model: { imgSize: 64, patchSize: 8 } }).model).cells).toEqual([2, 4, 8, 16]);
  });

  test('shallow models keep the distinct official taps and the first scales, as the official zip does', () => {
    expect(modelDims(parseRunConfig({ model: { depth: 4, imgSize: 64, patchSize: 8 } }).model)).toMatchObject({
      taps: [1, 3],
      scales: [4, 2],
      cells: [2, 4],
    });
  });

  test('the global variant has one decoder on the last block at scale ×1', () => {
    expect(modelDims(parseRunConfig({ model: { size: 'vit-small', variant: 'global' } }).model)).toMatchObject({
      taps: [11],
      scales: [1],
      cells: [16],
    });
  });

  test('global multi-scale (paper Table 6): every scale decoded from the last block', () => {
    expect(modelDims(parseRunConfig({ model: { variant: 'global', scales: [4, 2, 1, 0.5] } }).model)).toMatchObject({
      taps: [11, 11, 11, 11],
      scales: [4, 2, 1, 0.5],
      cells: [4, 8, 16, 32],
    });
  });

  test.each([
    [
      [1, 1, 1, 1],
      [16, 16, 16, 16],
    ],
    [
      [2, 1, 0.5, 0.5],
      [8, 16, 32, 32],
    ],
    [
      [0.5, 1, 2, 4],
      [32, 16, 8, 4],
    ],
  ] as const)('scale order %j (paper Table 4f) pairs with the default taps: cells %j', (scales, cells) => {
    expect(modelDims(parseRunConfig({ model: { scales: [...scales] } }).model)).toMatchObject({ taps: [1, 3, 9, 11], scales, cells });
  });

  test.each([
    [{ model: { imgSize: 60 } }, /^model\.imgSize: .*multiple of patchSize/],
    [{ model: { patchSize: 6, imgSize: 60 } }, /^model\.patchSize: .*scale ×4/],
    [{ model: { imgSize: 48, patchSize: 16 } }, /^model\.imgSize: scale ×0\.5 needs an even patch grid/],
    [{ model: { heads: 5 } }, /^model\.heads: .*divisible by heads=5/],
    [{ model: { D: 30, heads: 3 } }, /^model\.D: .*multiple of 4/],
    [{ model: { taps: [1, 3, 9], scales: [4, 2, 1, 0.5] } }, /^model\.taps: 3 taps but 4 scales/],
    [{ model: { taps: [1, 3, 3, 11] } }, /^model\.taps: .*increasing/],
    [{ model: { taps: [1, 3, 9, 12] } }, /^model\.taps: .*below depth=12/],
    [
      { model: { variant: 'global', scales: [4, 1], taps: [5, 11] } },
      /^model\.taps: the global variant decodes every scale from one block/,
    ],
    [{ model: { variant: 'global', scales: [4, 1], taps: [12, 12] } }, /^model\.taps: .*below depth=12/],
    [{ model: { maskRatio: 1.5 } }, /^model\.maskRatio/],
    [{ model: { imgSize: 32, patchSize: 16, maskRatio: 0.9 } }, /^model\.maskRatio: .*keeps 0 of 4/],
    [{ model: { decoderDim: 250 } }, /^model\.decoderHeads: /],
    [{ model: { target: 'pixel', hogBias: true } }, /^model\.hogBias: /],
    [{ model: { size: 'vit-huge' } }, /^model\.size: /],
    [{ optim: { batch: 0 } }, /^optim\.batch: /],
    [{ model: { mlpRatio: 1.3 } }, /^model\.mlpRatio: mlpRatio=1\.3 gives a block of width 192 an MLP 249\.6 wide/],
    [
      { model: { size: 'swin-tiny', imgSize: 224, patchSize: 4, mlpRatio: 1.01 } },
      /^model\.mlpRatio: mlpRatio=1\.01 gives a block of width \d+ an MLP [\d.]+ wide: it must be a whole number/,
    ],
  ])('%j is rejected naming the field', (input, message) => {
    const found = problems(input);
    expect(
      found.some((p) => message.test(p)),
      found.join('\n'),
    ).toBe(true);
  });
});

describe('sizes', () => {
  test('vit-large brings the official ViT-L recipe (LocalMIM ViT/README.md), as swin-l brings its own', () => {
    // --batch_size 128 --accum_iter 4 on 8 GPUs --hog_nbins 18 --hog_bias --epochs 800 --warmup_epochs 40 --blr 1.5e-4.
    const c = newRunConfig('localmim-hog', 'vit-large');
    expect(c.model).toMatchObject({ size: 'vit-large', target: 'hog', nbins: 18, hogBias: true });
    expect(c.optim).toMatchObject({ epochs: 800, warmupEpochs: 40, blr: 1.5e-4, minLr: 1e-6, batch: 128, accumIter: 32 });
    expect(c.optim.batch * c.optim.accumIter).toBe(128 * 4 * 8);
    expect(newRunConfig('localmim-pixel', 'vit-large').model).toMatchObject({ target: 'pixel', nbins: 9, hogBias: false });
    // ViT-B keeps the ViT-B recipe's 9 bins and blr 2e-4 at the 100-epoch length.
    const b = newRunConfig('localmim-hog', 'vit-base');
    expect(b.model).toMatchObject({ nbins: 9, hogBias: false });
    expect(b.optim).toMatchObject({ epochs: 100, warmupEpochs: 10, blr: 2e-4, batch: 32, accumIter: 1 });
  });

  test("the new-run form's choices: every preset, named, where it starts a run of the size", () => {
    const swin = presetStarts('swin-t');
    expect(Object.keys(swin)).toEqual(Object.keys(PRESETS));
    expect(swin.mae.label).toMatch(/^GreenMIM baseline/);
    expect(presetStarts('vit-base').mae.label).toMatch(/^MAE baseline/);
    expect(swin.mae.config).toEqual(newRunConfig('mae', 'swin-t'));
    expect(swin.mae.config.optim.blr).toBe(1.5e-4);
  });
});

describe('optimisation', () => {
  const o = parseRunConfig({ optim: { batch: 64, accumIter: 4, blr: 1.5e-4, epochs: 100, warmupEpochs: 10 } }).optim;

  test('lr = blr · effective batch / 256', () => {
    expect(peakLr(o)).toBeCloseTo(1.5e-4, 12);
    expect(peakLr({ ...o, lr: 3e-3 })).toBe(3e-3);
  });

  test('per-iteration warmup from 0, then cosine down to minLr', () => {
    expect(lrAt(0, o)).toBe(0);
    expect(lrAt(5, o)).toBeCloseTo(peakLr(o) / 2, 12);
    expect(lrAt(10, o)).toBeCloseTo(peakLr(o), 12);
    expect(lrAt(55, o)).toBeCloseTo(o.minLr + (peakLr(o) - o.minLr) / 2, 12);
    expect(lrAt(100, o)).toBeCloseTo(o.minLr, 12);
  });

  test('weight decay skips 1-D tensors and biases, not tokens', () => {
    expect(decays('blocks.0.attn.qkv.weight', [576, 192])).toBe(true);
    expect(decays('cls_token', [1, 1, 192])).toBe(true);
    expect(decays('decoder.0.mask_token', [1, 1, 256])).toBe(true);
    expect(decays('blocks.0.norm1.weight', [192])).toBe(false);
    expect(decays('decoder.0.pred.0.bias', [128])).toBe(false);
  });
});
