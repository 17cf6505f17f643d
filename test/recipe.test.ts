import { expect, test } from 'vitest';
import { parseRunConfig } from '../core/config.js';
import { classifierFor } from '../core/model/classifier.js';
import type { ParamStore } from '../core/model/module.js';
import { paramStore } from '../core/model/params.js';
import { cropKernel, finetuneRecipe } from '../core/recipe.js';
import './support/setup.js';

// The fine-tuning defaults that depend on the backbone, each against the official command it comes from
// (LocalMIM ViT/README.md, Swin/README.md, MAE main_linprobe.py); lr = blr · effective batch / 256.
const lr = (blr: number, batch: number) => (blr * batch) / 256;

test('Swin-B after a long HOG pretraining: lr 4e-3 at 128 × 2 accumulated × 8 GPUs = 2048, so blr 5e-4', () => {
  const hog = finetuneRecipe(400, { size: 'swin-b', target: 'hog' });
  expect(hog).toEqual({ blr: 5e-4, layerDecay: 0.9, minLr: 2.5e-7, dropPath: 0.1 });
  expect(lr(hog.blr, 2048)).toBeCloseTo(4e-3, 12);
  // Pixels: lr 4e-3 at 1024; after 100 epochs lr 5e-3 at 1024, either target.
  expect(lr(finetuneRecipe('imported', { size: 'swin-b', target: 'pixel' }).blr, 1024)).toBeCloseTo(4e-3, 12);
  expect(lr(finetuneRecipe(100, { size: 'swin-b', target: 'hog' }).blr, 1024)).toBeCloseTo(5e-3, 12);
});

test('ViT-L: lr 3e-3 at 64 × 2 × 8 = 1024 (blr 7.5e-4), layer decay 0.75, min lr 1e-6, drop path 0.2, whatever the length', () => {
  for (const epochs of [100, 800, 'imported', null] as const) {
    const r = finetuneRecipe(epochs, { size: 'vit-large' });
    expect(r).toEqual({ blr: 7.5e-4, layerDecay: 0.75, minLr: 1e-6, dropPath: 0.2 });
    expect(lr(r.blr, 1024)).toBeCloseTo(3e-3, 12);
  }
  // ViT-B keeps its two lengths: lr 4e-3 and 2e-3 at 1024.
  expect(lr(finetuneRecipe(100).blr, 1024)).toBeCloseTo(4e-3, 12);
  expect(lr(finetuneRecipe(1600, { size: 'vit-base' }).blr, 1024)).toBeCloseTo(2e-3, 12);
});

test('Swin-L: lr 2e-3 at 32 × 8 × 8 = 2048 (blr 2.5e-4), layer decay 0.8, drop path 0.3, min lr 2.5e-7', () => {
  const r = finetuneRecipe('imported', { size: 'swin-l', target: 'hog' });
  expect(r).toEqual({ blr: 2.5e-4, layerDecay: 0.8, minLr: 2.5e-7, dropPath: 0.3 });
  expect(lr(r.blr, 2048)).toBeCloseTo(2e-3, 12);
});

test('training crops: bicubic for the linear probe (interpolation=3) and Swin (timm honours "bicubic"), bilinear for ViT fine-tuning', () => {
  expect(cropKernel({ linearProbe: true }, { size: 'vit-base' })).toBe('cubic');
  expect(cropKernel({ linearProbe: false }, { size: 'swin-b' })).toBe('cubic');
  // ViT/util/datasets.py passes InterpolationMode.BICUBIC, which timm 0.3.2's _pil_interp maps to bilinear.
  expect(cropKernel({ linearProbe: false }, { size: 'vit-base' })).toBe('linear');
});

test('a new head: std 2e-5 when weights are loaded (trunc_normal_ after load), timm’s 0.02 from scratch', () => {
  const std = (scratch: boolean, model: object) => {
    const c = classifierFor(parseRunConfig({ model }).model, { classes: 100, scratch }, 0);
    const w = Array.from(c.params.get('head.weight').dataSync());
    c.dispose();
    return Math.sqrt(w.reduce((a, v) => a + v * v, 0) / w.length);
  };
  const vit = { D: 64, depth: 1, heads: 2, imgSize: 32, patchSize: 8 };
  const swin = { size: 'swin-tiny', imgSize: 112, patchSize: 4, D: 16, depths: [1, 1, 1], stageHeads: [1, 2, 4] };
  for (const model of [vit, swin]) {
    expect(std(true, model)).toBeCloseTo(0.02, 2);
    expect(std(false, model) / 2e-5).toBeCloseTo(1, 1);
  }
});

test('a ViT from scratch starts as timm 0.3.2’s: trunc_normal_(std .02) Linears, zero biases, PyTorch’s default patch conv', () => {
  const model = parseRunConfig({ model: { D: 64, depth: 2, heads: 2, imgSize: 32, patchSize: 8 } }).model;
  const values = (p: ParamStore, name: string) => Array.from(p.get(name).dataSync());
  const std = (w: number[]) => Math.sqrt(w.reduce((a, v) => a + v * v, 0) / w.length);
  const scratch = classifierFor(model, { classes: 10, scratch: true }, 0);
  // timm's _init_weights: every nn.Linear (qkv, proj, fc1, fc2 of each block, the head) trunc_normal_(std=.02), bias 0.
  const linears = [...scratch.params.vars.keys()].filter((n) => n.endsWith('.weight') && scratch.params.get(n).rank === 2);
  expect(linears).toHaveLength(2 * 4 + 1);
  for (const name of linears) {
    expect(Math.abs(std(values(scratch.params, name)) / 0.02 - 1), name).toBeLessThan(0.1);
    expect(
      values(scratch.params, name.replace(/weight$/, 'bias')).every((v) => v === 0),
      name,
    ).toBe(true);
  }
  // The patch conv is left to nn.Conv2d's reset_parameters: kaiming_uniform_(a=√5) and its bias rule, U(±1/√fan_in).
  const bound = 1 / Math.sqrt(3 * 8 * 8);
  for (const name of ['patch_embed.proj.weight', 'patch_embed.proj.bias'])
    expect(Math.max(...values(scratch.params, name).map(Math.abs)), name).toBeLessThanOrEqual(bound);
  expect(Math.abs(std(values(scratch.params, 'patch_embed.proj.weight')) / (bound / Math.sqrt(3)) - 1)).toBeLessThan(0.1);
  scratch.dispose();
  // The pretraining model keeps MAE's Xavier-uniform Linears: qkv [192, 64] has std √(2 / (64 + 192)).
  const pretrain = paramStore(model, 0);
  expect(Math.abs(std(values(pretrain, 'blocks.0.attn.qkv.weight')) / Math.sqrt(2 / 256) - 1)).toBeLessThan(0.1);
  pretrain.dispose();
});
