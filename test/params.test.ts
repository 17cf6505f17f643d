import { expect, test } from 'vitest';
import { parseRunConfig, swinDims } from '../core/config.js';
import { swinClassifierParams, vitClassifierParams } from '../core/model/classifier.js';
import { count, specsOf } from '../core/model/module.js';

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
