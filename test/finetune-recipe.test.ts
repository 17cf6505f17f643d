import * as tf from '@tensorflow/tfjs';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { parseRunConfig } from '../core/config.js';
import { type FinetuneRun } from '../core/finetune-config.js';
import { finetuneAugment } from '../core/data/augment.js';
import { DecodeCache } from '../core/data/cache.js';
import { indexFolder } from '../core/data/indexer.js';
import { Loader } from '../core/data/loader.js';
import { SAMPLE_IMAGES } from '../core/home.js';
import { ViTClassifier } from '../core/model/classifier.js';
import { paramStore } from '../core/model/params.js';
import { sinCosPosEmbed } from '../core/model/posEmbed.js';
import { parseCheckpointId } from '../core/runs/checkpoints.js';
import { prepare } from '../core/runs/lifecycle.js';
import { Store } from '../core/store/store.js';
import { AdamW } from '../core/train/adamw.js';
import { saveCheckpoint } from '../core/train/checkpoint.js';
import { finetuneTask } from '../core/train/finetune.js';
import { backend } from './support/setup.js';

const dir = mkdtempSync(join(tmpdir(), 'localmim-recipe-'));
const labeled = join(dir, 'labeled');
const home = join(dir, 'home');
const store = new Store(join(home, 'localmim.db'));
const model = parseRunConfig({ model: { D: 32, depth: 2, heads: 2, decoderDim: 16, decoderHeads: 2, imgSize: 32, patchSize: 8 } }).model;
let datasetId = 0;
afterAll(() => {
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

/** A source run whose one checkpoint (step 1) was saved at `epoch`: real weights of the tiny model. */
async function source(kind: 'pretrain' | 'import', epoch: number): Promise<number> {
  const config = kind === 'import' ? { model } : parseRunConfig({ model });
  const run = store.createRun({ name: `${kind} ${epoch}`, datasetId: null, config, backend: 'wasm', kind, status: 'finished', pid: null });
  const params = paramStore(model, run.id);
  const path = join(home, `ckpt-${run.id}.safetensors`);
  const written = await saveCheckpoint(path, { params }, new AdamW(new Map(), parseRunConfig({}).optim), {
    step: 1,
    epoch,
    loss: null,
    config,
  });
  params.dispose();
  store.addCheckpoint({ runId: run.id, step: 1, epoch, loss: null, path, ...written });
  return run.id;
}

beforeAll(async () => {
  for (const f of readdirSync(SAMPLE_IMAGES).filter((f) => f.endsWith('.jpg'))) {
    mkdirSync(join(labeled, f.replace(/-\d+\.jpg$/, '')), { recursive: true });
    symlinkSync(join(SAMPLE_IMAGES, f), join(labeled, f.replace(/-\d+\.jpg$/, ''), f));
  }
  datasetId = (await indexFolder(store, labeled)).datasetId;
});

const finetuneFrom = (from: string | null, finetune: object = {}) =>
  prepare(
    store,
    home,
    {
      new: 'finetune',
      datasetId,
      from: from === null ? null : parseCheckpointId(from),
      model,
      finetune: { recipe: 'official', ...finetune },
      seed: 0,
    },
    backend.chosen,
  );

test('fine-tuning defaults follow the pretraining length of the source checkpoint, as the official recipe', async () => {
  const recipe = (from: string | null, given?: object) => {
    const { blr, layerDecay, minLr, mixup, cutmix, randAugment, reprob } = (finetuneFrom(from, given).spec.config as FinetuneRun).finetune;
    return { blr, layerDecay, minLr, mixup, cutmix, randAugment, reprob };
  };
  const augment = { mixup: 0.8, cutmix: 1, randAugment: 'rand-m9-mstd0.5-inc1', reprob: 0.25 };
  const short = { blr: 1e-3, layerDecay: 0.75, minLr: 1e-6, ...augment };
  const long = { blr: 5e-4, layerDecay: 0.65, minLr: 1e-5, ...augment };
  expect(recipe(String(await source('pretrain', 100)))).toEqual(short);
  expect(recipe(String(await source('pretrain', 399.5)))).toEqual(short);
  expect(recipe(String(await source('pretrain', 1600)))).toEqual(long);
  expect(recipe(String(await source('import', 0)))).toEqual(long);
  expect(recipe(null)).toEqual(short);
  expect(recipe('3', { blr: 3e-4, reprob: 0 })).toEqual({ ...long, blr: 3e-4, reprob: 0 });
  expect(() => finetuneFrom('3', { randAugment: 'rand-m9-bogus' })).toThrow(
    /finetune: invalid config: randAugment: "rand-m9-bogus": section "bogus"/,
  );
});

test('the position embedding is trainable in fine-tuning: it starts as the source table and moves with a step', async () => {
  const prepared = finetuneFrom(String(await source('pretrain', 100)), { batch: 4 });
  const config = prepared.spec.config as FinetuneRun;
  const { train } = prepared.job.data as { train: { abs: string; hash: string; label: number }[] };
  const cache = new DecodeCache(join(home, 'cache'));
  const loader = new Loader(train, cache, 32, 4, 0, { minScale: 0.08, kernel: 'linear', transform: finetuneAugment(config.finetune) });
  const pretrained = paramStore(model, 1);
  const init = new Map(pretrained.entries().map(([n, t]) => [n, t.dataSync() as Float32Array]));
  pretrained.dispose();
  const task = finetuneTask(config, { loader, labels: train.map((t) => t.label), val: { images: [], labels: [] } }, init);
  const pos = task.model.params.get('pos_embed');
  expect(pos).toBeInstanceOf(tf.Variable);
  expect(pos.dataSync()).toEqual(sinCosPosEmbed(32, 4));
  await task.step(0, 0, 0, 1e-3);
  const moved = task.model.params.get('pos_embed').dataSync();
  expect(moved.some((v, i) => v !== sinCosPosEmbed(32, 4)[i])).toBe(true);
  expect(moved[0]).not.toBe(0); // the class row trains too
  task.dispose();

  const scratch = new ViTClassifier(model, { classes: 6 }, 0);
  const values = scratch.params.get('pos_embed').dataSync() as Float32Array;
  const sd = Math.sqrt(values.reduce((a, v) => a + v * v, 0) / values.length);
  expect(sd).toBeGreaterThan(0.015);
  expect(sd).toBeLessThan(0.025);
  scratch.dispose();
});
