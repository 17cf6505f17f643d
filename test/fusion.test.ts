import { describe, expect, test } from 'vitest';
import { newRunConfig, parseRunConfig, swinDims, modelDims, type ModelConfig } from '../core/config.js';
import { LocalMIM, localMimParams } from '../core/model/localmim.js';
import { count } from '../core/model/module.js';
import { SwinLocalMIM, swinLocalMimParams } from '../core/model/swin-localmim.js';
import { Rng } from '../core/random.js';
import type { RgbImage } from '../core/image.js';
import { TrainStep } from '../core/train/step.js';
import './support/setup.js';

// The global reconstruction with feature fusion (paper Table 7, the Table 4d "fusion" row, Fig. 5's "Fusion" curve):
// the taps' normalised features, the lower ones each through a Linear, summed onto the last, one decoder at one scale.

const images = (side: number, n = 2): RgbImage[] => {
  const rng = new Rng(5);
  return Array.from({ length: n }, () => ({
    width: side,
    height: side,
    data: Float32Array.from({ length: side * side * 3 }, () => Math.floor(rng.next() * 256)),
  }));
};

/** One training step's reported losses; `moved` reads a tensor before and after it. */
function oneStep(model: LocalMIM | SwinLocalMIM, imgs: RgbImage[], moved: string): { losses: number[]; moved: boolean } {
  const step = new TrainStep(model as LocalMIM, parseRunConfig({ optim: { lr: 1e-3 } }).optim);
  const batch = model.prepare(imgs, new Rng(1).fill(model.noiseSize(imgs.length)));
  const before = model.params.get(moved).dataSync().slice();
  const out = step.run([batch as never], 1e-3);
  const losses = [...out.dataSync()];
  const after = model.params.get(moved).dataSync();
  out.dispose();
  model.disposeBatch(batch as never);
  step.dispose();
  model.dispose();
  return { losses, moved: after.some((v, i) => v !== before[i]) };
}

describe('ViT fusion', () => {
  test('the preset fuses LocalMIM’s blocks [1, 3, 9, 11] onto the last, decoded at ×1 (14²) by one decoder', () => {
    const c = newRunConfig('fusion', 'vit-base', { model: { size: 'vit-base', imgSize: 224, patchSize: 16 } }).model;
    expect(modelDims(c)).toMatchObject({ taps: [1, 3, 9, 11], scales: [1], cells: [16] });
    expect(() => parseRunConfig({ model: { variant: 'fusion', scales: [4, 1] } })).toThrow(
      /scales: the fusion variant decodes its fused features at one scale/,
    );
  });

  test('parameters: the global model’s, plus three more tap norms and three D×D Linears (ViT-B)', () => {
    const at = (variant: 'global' | 'fusion') =>
      count(localMimParams(parseRunConfig({ model: { size: 'vit-base', imgSize: 224, patchSize: 16, variant } }).model));
    const D = 768;
    expect(at('fusion') - at('global')).toBe(3 * 2 * D + 3 * (D * D + D));
  });

  test('trains one step; the lower blocks learn through their projections', () => {
    const c: ModelConfig = parseRunConfig({
      model: { variant: 'fusion', D: 32, depth: 4, heads: 2, decoderDim: 16, decoderHeads: 2, imgSize: 32, patchSize: 8, taps: [0, 1, 3] },
    }).model;
    const model = new LocalMIM(c, 0);
    expect(model.targetShapes()).toEqual([[16, 27]]);
    const r = oneStep(model, images(32), 'fuse.0.weight');
    expect(r.losses.every(Number.isFinite)).toBe(true);
    expect(r.moved).toBe(true);
  });
});

describe('Swin fusion', () => {
  test('fuses every stage onto the last (7²): stage t’s r × r tokens of a mask unit through one Linear', () => {
    const c = newRunConfig('fusion', 'swin-b', { model: { size: 'swin-b' } }).model;
    const d = swinDims(c);
    expect(d).toMatchObject({ taps: [0, 1, 2, 3], reads: [3], predGrids: [7], cells: [32], decoderDims: [128] });
    const global = count(swinLocalMimParams({ ...c, variant: 'global' }));
    // Norms of the three lower taps (2C·2, 4C·2, 8C·2 with C = 128), and Linears of 4²·256, 2²·512 and 1024 inputs to 1024.
    const norms = 2 * (256 + 512 + 1024);
    const linears = [16 * 256, 4 * 512, 1024].reduce((n, i) => n + i * 1024 + 1024, 0);
    expect(count(swinLocalMimParams(c)) - global).toBe(norms + linears);
    expect(() => parseRunConfig({ model: { ...c, taps: [0, 1] } })).toThrow(/taps: the fusion variant fuses onto the last stage/);
  });

  test('trains one step (three tiny stages at 112 px)', () => {
    const c = parseRunConfig({
      model: {
        size: 'swin-tiny',
        imgSize: 112,
        patchSize: 4,
        D: 16,
        stageHeads: [1, 2, 4],
        decoderDim: 16,
        decoderHeads: 2,
        variant: 'fusion',
      },
    }).model;
    const model = new SwinLocalMIM(c, 0);
    expect(model.targetShapes()).toEqual([[49, 27]]);
    const r = oneStep(model, images(112), 'fuse.0.weight');
    expect(r.losses.every(Number.isFinite)).toBe(true);
    expect(r.moved).toBe(true);
  });
});
