import { expect, test } from 'vitest';
import { parseRunConfig, swinDims } from '../core/config.js';
import { swinClassifierParams, vitClassifierParams } from '../core/model/classifier.js';
import { count, specsOf } from '../core/model/module.js';
import { timmSwinConfig, type Backbone } from '../core/export/backbone.js';

// Counted from the declarations alone, no tensors: the published sizes of timm's models with a 1000-class head.

test('ViT-B/16 at 224 px declares timm vit_base_patch16_224: 86,567,656 parameters, 85,798,656 without its head', () => {
  const model = parseRunConfig({ model: { size: 'vit-base', imgSize: 224, patchSize: 16 } }).model;
  const m = vitClassifierParams(model, { classes: 1000, probe: false });
  expect(count(m)).toBe(86_567_656);
  // timm's num_classes=0 keeps the final norm (ours fc_norm, as global_pool="avg") and drops the head.
  expect(count(m) - count(m.head)).toBe(85_798_656);
  // As many tensors as timm's state dict: cls_token, pos_embed, the patch conv, 12 per block, a norm, the head.
  expect(specsOf(m)).toHaveLength(4 + 12 * 12 + 2 + 2);
});

test('Swin-T declares timm swin_tiny_patch4_window7_224: 28,288,354 parameters', () => {
  const m = swinClassifierParams(swinDims(parseRunConfig({ model: { size: 'swin-t', patchSize: 4 } }).model), 1000);
  expect(count(m)).toBe(28_288_354);
  // The patch conv and norm, 13 per block (a bias table among them), 3 per patch merging, the final norm, the head.
  expect(specsOf(m)).toHaveLength(4 + 12 * 13 + 3 * 3 + 2 + 2);
});

test('Swin-L declares timm swin_large_patch4_window7_224 at window 7 (196,532,476); at the preset window 14 only the bias tables grow', () => {
  const at = (windowSize?: number) =>
    swinClassifierParams(swinDims(parseRunConfig({ model: { size: 'swin-l', patchSize: 4, windowSize } }).model), 1000);
  expect(count(at(7))).toBe(196_532_476);
  // Window 14 on the 56/28/14 grids: each block's table has (2·14 − 1)² = 729 rows instead of 169, one column per head;
  // the last stage's 7² grid clamps its window to 7. 560 more rows × (6·2 + 12·2 + 24·18) heads over those blocks.
  expect(count(at())).toBe(196_532_476 + 560 * (6 * 2 + 12 * 2 + 24 * 18));
  expect(count(at())).toBe(196_794_556);
});

test('ViT-L/16 at 224 px declares timm vit_large_patch16_224: 304,326,632 parameters', () => {
  const model = parseRunConfig({ model: { size: 'vit-large', imgSize: 224, patchSize: 16 } }).model;
  expect(count(vitClassifierParams(model, { classes: 1000, probe: false }))).toBe(304_326_632);
});

test('a Swin-L export names its window 14 for timm', () => {
  const model = parseRunConfig({ model: { size: 'swin-l', patchSize: 4 } }).model;
  expect(timmSwinConfig({ model } as Backbone).model_args).toMatchObject({ window_size: 14, embed_dim: 192, num_heads: [6, 12, 24, 48] });
});
