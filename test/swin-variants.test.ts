import * as tf from '@tensorflow/tfjs';
import { describe, expect, test } from 'vitest';
import { parseRunConfig, swinDims, type ModelConfig, type Scale } from '../core/config.js';
import { count, declare } from '../core/model/module.js';
import { swinBackboneParams } from '../core/model/swin.js';
import { SwinLocalMIM, swinLocalMimParams } from '../core/model/swin-localmim.js';
import { Rng } from '../core/random.js';
import type { RgbImage } from '../core/image.js';
import { TrainStep } from '../core/train/step.js';
import { blockGradientNorms } from '../core/analysis/gradients.js';
import './support/setup.js';

// The paper's Swin experiments beyond the default model: the plain global baseline (Table 4a, GreenMIM's objective),
// global single- and multi-scale (Tables 6b, 7b), the isolated gradients (Table 5) and the location subsets (Table 4d).
// Taps are 0-based stages: the paper's layers 2, 4, 22, 24 of Swin-B are stages 0, 1, 2, 3.

const swinB = (model: object) =>
  parseRunConfig({ model: { size: 'swin-b', patchSize: 4, decoderDim: 128, decoderHeads: 4, ...model } }).model;

describe('Swin variants as configs (Swin-B at 224 px)', () => {
  test.each([
    ['LocalMIM: every stage at its own grid', {}, [0, 1, 2, 3], [28, 14, 7, 7]],
    ['Table 4d [24]', { taps: [3] }, [3], [7]],
    ['Table 4d [22, 24]', { taps: [2, 3] }, [2, 3], [7, 7]],
    ['Table 4d [4, 22, 24]', { taps: [1, 2, 3] }, [1, 2, 3], [14, 7, 7]],
    ['Table 4a / 6b / 7b global single-scale', { variant: 'global' }, [3], [7]],
    ['Table 6b global multi-scale [28², 14², 7², 7²]', { variant: 'global', scales: [4, 2, 1, 1] }, [3, 3, 3, 3], [28, 14, 7, 7]],
    ['Table 6b local single-scale [14²] × 4', { scales: [0.5, 1, 2, 2] }, [0, 1, 2, 3], [14, 14, 14, 14]],
    ['Table 5 isolated gradients', { variant: 'isolated' }, [0, 1, 2, 3], [28, 14, 7, 7]],
  ] as const)('%s %j: taps %j, grids %j', (_, model, taps, grids) => {
    const d = swinDims(swinB(model));
    expect(d.taps).toEqual(taps);
    expect(d.predGrids).toEqual(grids);
    expect(d.cells).toEqual(grids.map((g) => 224 / g));
  });

  test.each([
    [{ variant: 'global', taps: [2, 3], scales: [1, 1] }, /taps: the global variant decodes every scale from one stage/],
    [{ taps: [3, 2] }, /taps: taps \[3,2\] must be increasing/],
    [{ taps: [4] }, /taps: taps \[4\] must be increasing 0-based stage indices below 4 stages/],
    [{ variant: 'global', scales: [0.5] }, /scales: scale ×0.5 of stage 3 predicts a 3.5² grid/],
    [{ taps: [2, 3], scales: [1] }, /taps: 2 taps but 1 scales/],
    [{ depth: 4 }, /depth: a Swin model has stages/],
  ])('%j is refused', (model, message) => {
    expect(() => swinB(model)).toThrow(message);
  });
});

/** The official decoder's trained parameters (`ViT_Decoder`): embed, mask token, timm blocks, norm, and the predictor. */
function decoderCount(W: number, inWidth: number, F: number, s: Scale, depth = 1): number {
  const block = 12 * W * W + 13 * W; // qkv, proj, fc1, fc2 (ratio 4) with biases, two LayerNorms
  const deconv = (i: number, o: number) => i * o * 4 + o;
  const conv = (i: number) => i * F + F;
  const pred = {
    1: conv(W),
    2: deconv(W, W / 2) + conv(W / 2),
    4: deconv(W, W / 2) + W + deconv(W / 2, W / 4) + conv(W / 4),
    0.5: conv(W),
  }[s];
  return inWidth * W + W + W + depth * block + 2 * W + pred;
}

describe('parameter counts of each variant, by the official formula (Swin-B, 18-bin HOG)', () => {
  test.each([
    ['local', {}],
    ['[24]', { taps: [3] }],
    ['[4, 22, 24]', { taps: [1, 2, 3] }],
    ['global', { variant: 'global' }],
    ['global multi-scale', { variant: 'global', scales: [4, 2, 1, 1] }],
    ['isolated', { variant: 'isolated' }],
  ] as const)('%s', (_, model) => {
    const c = swinB({ nbins: 18, hogBias: true, ...model });
    const d = swinDims(c);
    const backbone = count(declare(swinBackboneParams(d)));
    // timm swin_base_patch4_window7_224 (87,768,224) less its head (1024·1000 + 1000) and final norm (2·1024).
    expect(backbone).toBe(87_768_224 - 1_025_000 - 2048);
    const heads = d.taps.map((t, k) => 2 * d.outWidths[t]! + decoderCount(d.decoderDims[k]!, d.outWidths[t]!, 54, d.scales[k]!));
    expect(count(swinLocalMimParams(c))).toBe(backbone + heads.reduce((a, b) => a + b, 0));
  });
});

describe('each Swin variant trains one step (three tiny stages at 112 px: grids 28/14/7, outputs 14/7/7)', () => {
  const tiny = (model: object): ModelConfig =>
    parseRunConfig({
      model: { size: 'swin-tiny', imgSize: 112, patchSize: 4, D: 16, stageHeads: [1, 2, 4], decoderDim: 16, decoderHeads: 2, ...model },
    }).model;
  const rng = new Rng(3);
  const images: RgbImage[] = Array.from({ length: 2 }, () => ({
    width: 112,
    height: 112,
    data: Float32Array.from({ length: 112 * 112 * 3 }, () => Math.floor(rng.next() * 256)),
  }));

  test.each([
    ['global single-scale', { variant: 'global' }, 1],
    ['global multi-scale', { variant: 'global', scales: [2, 1, 1] }, 3],
    ['isolated', { variant: 'isolated' }, 3],
    ['location subset [2]', { taps: [2] }, 1],
    ['location subset [1, 2]', { taps: [1, 2] }, 2],
    ['GreenMIM baseline (pixels)', { variant: 'global', target: 'pixel' }, 1],
  ] as const)('%s', (_, model, decoders) => {
    const m = new SwinLocalMIM(tiny(model), 0);
    expect(m.targetShapes()).toHaveLength(decoders);
    const step = new TrainStep(m, parseRunConfig({ optim: { lr: 1e-3 } }).optim);
    const batch = m.prepare(images, new Rng(1).fill(m.noiseSize()));
    const before = m.params.get('layers.0.blocks.0.attn.qkv.weight').dataSync().slice();
    const out = step.run([batch], 1e-3);
    expect([...out.dataSync()].every(Number.isFinite)).toBe(true);
    // The first stage learns in every variant: through the last stage (global) or its own decoder.
    expect(m.params.get('layers.0.blocks.0.attn.qkv.weight').dataSync()).not.toEqual(before);
    out.dispose();
    m.disposeBatch(batch);
    step.dispose();
    m.dispose();
  });

  test('isolated gradients: a stage learns from its own decoder only (the local model’s first loss alone)', () => {
    const grads = (variant: 'local' | 'isolated', only?: number) => {
      const m = new SwinLocalMIM(tiny({ variant }), 0);
      const batch = m.prepare(images, new Rng(1).fill(m.noiseSize()));
      const w = m.params.vars.get('layers.0.blocks.0.attn.qkv.weight')!;
      const { value, grads } = tf.variableGrads(() => {
        const out = m.forward(batch);
        return only === undefined ? out.loss : (out.losses[only] as tf.Scalar);
      }, [w]);
      const g = grads[w.name]!.dataSync().slice();
      tf.dispose([value, ...Object.values(grads)]);
      m.disposeBatch(batch);
      m.dispose();
      return g;
    };
    const isolated = grads('isolated');
    const ownLoss = grads('local', 0);
    const everyLoss = grads('local');
    isolated.forEach((v, i) => expect(v).toBeCloseTo(ownLoss[i]!, 6));
    expect(everyLoss.some((v, i) => Math.abs(v - ownLoss[i]!) > 1e-6)).toBe(true);
  });
});

test('gradient norms per block (paper Fig. 5) for Swin: local, global and fusion, stage by stage', async () => {
  const rng = new Rng(4);
  const img: RgbImage = { width: 112, height: 112, data: Float32Array.from({ length: 112 * 112 * 3 }, () => Math.floor(rng.next() * 256)) };
  for (const variant of ['local', 'global', 'fusion'] as const) {
    const model = new SwinLocalMIM(
      parseRunConfig({
        model: { size: 'swin-tiny', imgSize: 112, patchSize: 4, D: 16, stageHeads: [1, 2, 4], decoderDim: 16, decoderHeads: 2, variant },
      }).model,
      0,
    );
    const norms = await blockGradientNorms(model, [img]);
    expect(norms).toHaveLength(6);
    expect(norms.every((g) => Number.isFinite(g) && g > 0)).toBe(true);
    model.dispose();
  }
});
