import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, test } from 'vitest';
import { newRunConfig, parseRunConfig, PRESETS } from '../core/config.js';
import { paramStore } from '../core/model/params.js';
import { localmim } from './support/cli.js';
import './support/setup.js';

const dir = mkdtempSync(join(tmpdir(), 'localmim-mae-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** MAE's decoder (models_mae.py, mae_vit_base_patch16) for encoder width D and patch p, counted from its modules. */
function maeDecoderParams(D: number, p: number): number {
  const d = 512;
  const layerNorm = 2 * d;
  const linear = (i: number, o: number) => i * o + o;
  const block = layerNorm + linear(d, 3 * d) + linear(d, d) + layerNorm + linear(d, 4 * d) + linear(4 * d, d);
  // decoder_embed, mask_token, 8 decoder_blocks, decoder_norm, decoder_pred; decoder_pos_embed is fixed (no parameter).
  return linear(D, d) + d + 8 * block + layerNorm + linear(d, p * p * 3);
}

test.each([
  { size: 'vit-tiny', patchSize: 8, D: 192 },
  { size: 'vit-small', patchSize: 16, D: 384 },
] as const)("the mae preset's decoder has as many parameters as MAE's ($size, patch $patchSize)", ({ size, patchSize, D }) => {
  const model = parseRunConfig({ model: { ...PRESETS.mae, size, imgSize: 2 * patchSize, patchSize } }).model;
  const params = paramStore(model, 0);
  try {
    const decoder = [...params.vars].filter(([name]) => name.startsWith('decoder.'));
    expect(decoder.reduce((n, [, v]) => n + v.size, 0)).toBe(maeDecoderParams(D, patchSize));
    expect(params.vars.has('decoder.0.pos_embed')).toBe(false);
    expect(params.buffers.get('decoder.0.pos_embed')!.shape).toEqual([1, 1 + 4, 512]);
  } finally {
    params.dispose();
  }
});

test("the mae preset takes MAE's schedule on a ViT: blr 1.5e-4 (MAE PRETRAIN.md), min lr 0 (main_pretrain.py's default)", () => {
  for (const size of ['vit-tiny', 'vit-base']) {
    expect(newRunConfig('mae', size).optim).toMatchObject({ blr: 1.5e-4, minLr: 0 });
    // LocalMIM keeps its own (ViT/README.md: --blr 2e-4; run_pretrain.py: min_lr 1e-6).
    expect(newRunConfig('localmim-hog', size).optim).toMatchObject({ blr: 2e-4, minLr: 1e-6 });
  }
  // MAE ViT-L (PRETRAIN.md: 800 epochs, 40 of warmup, 4096 a step) is the ViT-L recipe the size brings, at MAE's floor.
  expect(newRunConfig('mae', 'vit-large').optim).toMatchObject({
    blr: 1.5e-4,
    minLr: 0,
    epochs: 800,
    warmupEpochs: 40,
    batch: 128,
    accumIter: 32,
  });
});

test("localmim pretrain --preset mae starts with MAE's decoder: 512-d, 8 blocks, 16 heads, on the last block", () => {
  const r = localmim(['pretrain', '--preset', 'mae', '--img', '32', '--patch', '8', '--max-steps', '1', '--json', '--home', dir]);
  expect(r.code, r.stderr).toBe(0);
  const events = r.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { type: string; config?: { model: Record<string, unknown>; optim: Record<string, unknown> } });
  const start = events.find((e) => e.type === 'start')!;
  expect(start.config!.model).toMatchObject({
    variant: 'global',
    target: 'pixel',
    normPix: true,
    decoderDim: 512,
    decoderDepth: 8,
    decoderHeads: 16,
  });
  expect(start.config!.optim).toMatchObject({ blr: 1.5e-4, minLr: 0 });
  expect(events.filter((e) => e.type === 'step')).toHaveLength(1);
});
