import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, test } from 'vitest';
import { parseRunConfig } from '../core/config.js';
import { FinetuneRunSchema } from '../core/finetune-config.js';
import { newRunConfig } from '../core/presets.js';
import { torchCannot, torchProblem, torchSpec } from '../core/engine.js';
import { launchNodeJob } from '../core/jobs/launch.js';
import { assertTorchCan } from '../core/runs/torch.js';
import { planScaleOut } from '../core/scale-out/folder.js';
import { Service } from '../core/service/service.js';

// What the torch engine cannot train is one function's answer (core/engine.ts torchCannot): the CLI and the service
// (assertTorchCan), scale-out (planScaleOut) and the new-run form (config.check) all ask it.
const vit = parseRunConfig({ model: { size: 'vit-tiny', imgSize: 32, patchSize: 8 } });
const swin = newRunConfig(undefined, 'swin-tiny');
const fusion = parseRunConfig({ model: { ...vit.model, variant: 'fusion' } });

test('the torch engine pretrains ViT and Swin in every variant, fine-tunes and LARS-probes ViTs, embeds with both, nothing else', () => {
  expect(torchCannot({ kind: 'pretrain', model: vit.model })).toBeUndefined();
  expect(torchCannot({ kind: 'pretrain', model: swin.model })).toBeUndefined();
  expect(torchCannot({ kind: 'pretrain', model: fusion.model })).toBeUndefined();
  expect(torchCannot({ kind: 'finetune', model: vit.model })).toBeUndefined();
  expect(torchCannot({ kind: 'finetune', model: vit.model, linearProbe: 'lars' })).toBeUndefined();
  expect(torchCannot({ kind: 'finetune', model: vit.model, linearProbe: 'logistic' })?.path).toBe('finetune.probeFeatures');
  expect(torchCannot({ kind: 'finetune', model: swin.model })?.path).toBe('model.size');
  expect(torchCannot({ kind: 'import', model: vit.model })?.path).toBe('kind');
  expect(torchCannot({ kind: 'embed', model: vit.model })).toBeUndefined();
  expect(torchCannot({ kind: 'embed', model: swin.model })).toBeUndefined();
  expect(torchProblem({ kind: 'finetune', model: swin.model })).toBe(
    'model.size: swin-tiny: the torch engine fine-tunes ViT models only; train it with --engine tfjs',
  );
});

test('the CLI, the service and scale-out ask the same function', () => {
  // A logistic probe asks the engine to embed only; a Swin's fine-tuning it refuses.
  const finetune = (model: object, finetune: object) => FinetuneRunSchema.parse({ model, finetune, classes: ['a', 'b'], from: null });
  expect(() => assertTorchCan({ kind: 'finetune', config: finetune(vit.model, { linearProbe: true }) })).not.toThrow();
  expect(() => assertTorchCan({ kind: 'finetune', config: finetune(vit.model, {}) })).not.toThrow();
  expect(() => assertTorchCan({ kind: 'finetune', config: finetune(swin.model, {}) })).toThrow(
    /^engine: model\.size: swin-tiny: the torch engine fine-tunes ViT models only/,
  );
  const plan = (config: typeof vit) => () =>
    planScaleOut({ config, source: null, dataRoot: '/nowhere', rows: [], out: '/tmp/localmim-never-written' });
  // Past the engine's check, to the images.
  expect(plan(swin)).toThrow(/^--data: \/nowhere has 0 usable images/);
  expect(plan(fusion)).toThrow(/^--data: \/nowhere has 0 usable images/);
});

test("the engine's spec carries every size resolved: train.py has no table or default of its own", () => {
  const spec = torchSpec(parseRunConfig({ model: { size: 'vit-base', imgSize: 224, patchSize: 16 }, optim: { batch: 64 } }));
  expect(spec.model).toMatchObject({ D: 768, depth: 12, heads: 12, g: 14, L: 196, nKeep: 49, taps: [1, 3, 9, 11], scales: [4, 2, 1, 0.5] });
  expect(spec.model).toMatchObject({ cells: [4, 8, 16, 32], F: [27, 27, 27, 27], decoderDim: 256, decoderDepth: 1 });
  expect(spec.optim).toMatchObject({ peakLr: (2e-4 * 64) / 256, lrScalesWithWorld: true });
  expect(torchSpec(parseRunConfig({ optim: { lr: 1e-3 } })).optim).toMatchObject({ peakLr: 1e-3, lrScalesWithWorld: false });
});

test("the new-run form's answer (config.check): why the torch engine cannot train the config, or null", async () => {
  const home = mkdtempSync(join(tmpdir(), 'localmim-engine-'));
  const service = new Service(home, () => launchNodeJob());
  try {
    const check = (config: object) => service.call('config.check', { config }) as Promise<{ torch: string | null }>;
    expect((await check(vit)).torch).toBeNull();
    expect((await check(swin)).torch).toBeNull();
    expect((await check(fusion)).torch).toBeNull();
  } finally {
    await service.shutdown();
    rmSync(home, { recursive: true, force: true });
  }
}, 60_000);
