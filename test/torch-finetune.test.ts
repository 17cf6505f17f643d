import * as tf from '@tensorflow/tfjs';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, expect, test } from 'vitest';
import { FinetuneRunSchema } from '../core/finetune-config.js';
import { finetuneAugment } from '../core/data/augment.js';
import { DecodeCache } from '../core/data/cache.js';
import { Loader } from '../core/data/loader.js';
import { torchFinetuneSpec } from '../core/engine.js';
import { SAMPLE_IMAGES } from '../core/home.js';
import { classifierFor } from '../core/model/classifier.js';
import { cropKernel } from '../core/recipe.js';
import { paramGroups } from '../core/runs/torch.js';
import { decodeSafetensors, encodeSafetensors, type NamedTensor } from '../core/safetensors.js';
import { TRAIN_PY } from '../core/scale-out/folder.js';
import { finetuneTask } from '../core/train/finetune.js';
import { lrAt } from '../core/train/schedule.js';
import { describeWith, PYTHON } from './support/requirements.js';

// ViT and Swin fine-tuning on the torch engine equal the app’s: the same weights and the same augmented batches handed over
// (RandAugment, crops and random erasing are the app's, as test/scale-out.test.ts hands pretraining its pixels); Mixup,
// CutMix, label smoothing and stochastic depth drawn by each engine from the same seeds; layer decay as handed over.
const dir = mkdtempSync(join(tmpdir(), 'localmim-torch-ft-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const STEPS = fileURLToPath(new URL('./scale/finetune_steps.py', import.meta.url));

const files = readdirSync(SAMPLE_IMAGES)
  .filter((f) => f.endsWith('.jpg'))
  .sort();
const classes = [...new Set(files.map((f) => f.replace(/-\d+\.jpg$/, '')))];
const items = files.map((f) => ({ abs: join(SAMPLE_IMAGES, f), hash: f, label: classes.indexOf(f.replace(/-\d+\.jpg$/, '')) }));

/** Five steps of a classifier of `model` (layer decay, drop path, Mixup/CutMix, label smoothing) on both engines. */
async function fiveSteps(name: string, model: object) {
  const config = FinetuneRunSchema.parse({
    model,
    finetune: { batch: 8, epochs: 1, warmupEpochs: 0, blr: 5e-3, dropPath: 0.2, layerDecay: 0.75, mixup: 0.8, cutmix: 1 },
    seed: 3,
    classes,
    from: null,
  });
  const f = config.finetune;
  const loader = new Loader(items, new DecodeCache(join(dir, 'cache')), 32, f.batch, config.seed, {
    minScale: f.minScale,
    kernel: cropKernel(f, config.model),
    transform: finetuneAugment(f),
  });
  const task = finetuneTask(config, { loader, labels: items.map((it) => it.label), val: { images: [], labels: [] } });
  const handed = new Map<string, NamedTensor>();
  for (const [n, t] of task.model.params.entries()) handed.set(n, { shape: t.shape, values: t.dataSync() as Float32Array });
  const lrs: number[] = [];
  const ours: number[] = [];
  for (let s = 0; s < 5; s++) {
    const { images, items: picked } = await loader.batchAt(0, s);
    const pixels = new Float32Array(f.batch * 32 * 32 * 3);
    images.forEach((img, b) => pixels.set(img.data, b * 32 * 32 * 3));
    handed.set(`batch.${s}.images`, { shape: [f.batch, 32, 32, 3], values: pixels });
    handed.set(`batch.${s}.labels`, { shape: [f.batch], values: Float32Array.from(picked, (k) => items[k]!.label) });
    lrs.push(lrAt(s / task.batchesPerEpoch, f));
    const loss = await task.step(0, s, s, lrs[s]!);
    ours.push(((await loss.data()) as Float32Array)[0]!);
    tf.dispose(loss);
  }
  const spec = join(dir, `${name}.json`);
  const classifier = classifierFor(config.model, { classes: classes.length, scratch: true }, config.seed); // the task's, for its groups
  writeFileSync(spec, JSON.stringify(torchFinetuneSpec(config, paramGroups(classifier, f.layerDecay))));
  classifier.dispose();
  writeFileSync(join(dir, `${name}-in.safetensors`), encodeSafetensors(handed, { lrs: JSON.stringify(lrs) }));
  task.dispose();

  const r = spawnSync(PYTHON, [STEPS, TRAIN_PY, spec, join(dir, `${name}-in.safetensors`), join(dir, `${name}-out.safetensors`)], {
    encoding: 'utf8',
    env: { ...process.env, OMP_NUM_THREADS: '1', PYTHONDONTWRITEBYTECODE: '1' },
  });
  expect(r.status, r.stderr).toBe(0);
  const theirs = decodeSafetensors(readFileSync(join(dir, `${name}-out.safetensors`))).tensors.get('losses')!.values;
  const gaps = ours.map((l, s) => Math.abs(theirs[s]! - l) / l);
  console.log(
    `${name} losses tfjs ${ours.map((l) => l.toFixed(4))}, torch ${[...theirs].map((l) => l.toFixed(4))}; largest gap ${Math.max(...gaps).toExponential(1)}`,
  );
  gaps.forEach((gap, s) => expect(gap, `step ${s + 1}`).toBeLessThan(1e-3));
  // The steps trained: the loss moved.
  expect(Math.abs(ours[4]! - ours[0]!)).toBeGreaterThan(1e-3);
}

describeWith('torch', 'pillow')('fine-tuning on the torch engine', () => {
  test('five ViT steps (layer decay, drop path, Mixup/CutMix, label smoothing) equal tfjs within 1e-3 of the loss', async () => {
    await fiveSteps('vit', { D: 32, depth: 4, heads: 2, imgSize: 32, patchSize: 8 });
  }, 120_000);

  // Two stages of windows 4 on an 8 × 8 token grid: the first shifted, its 64 tokens packed into groups of windows.
  test('five Swin steps equal tfjs within 1e-3 of the loss', async () => {
    await fiveSteps('swin', { size: 'swin-tiny', D: 32, depths: [2, 2], stageHeads: [1, 2], windowSize: 4, imgSize: 32, patchSize: 4 });
  }, 120_000);
});
