import * as tf from '@tensorflow/tfjs';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { probeLogits, probeTop1 } from '../core/analysis/linear-probe.js';
import { parseRunConfig, type FinetuneRun } from '../core/config.js';
import { finetuneAugment } from '../core/data/augment.js';
import { DecodeCache } from '../core/data/cache.js';
import { indexFolder } from '../core/data/indexer.js';
import { Loader } from '../core/data/loader.js';
import { paramStore } from '../core/model/params.js';
import { evalImages } from '../core/runs/baselines.js';
import { checkpointRef } from '../core/runs/checkpoints.js';
import type { LabeledItem } from '../core/runs/job.js';
import { prepare } from '../core/runs/lifecycle.js';
import { RunRecorder } from '../core/runs/recorder.js';
import { finetuneDefaults, finetuneRecipe, SMALL_DATA, SMALL_DATA_BELOW } from '../core/recipe.js';
import { Store } from '../core/store/store.js';
import { AdamW } from '../core/train/adamw.js';
import { saveCheckpoint } from '../core/train/checkpoint.js';
import { finetuneTask, headFromProbe, headInputs } from '../core/train/finetune.js';
import { localmim } from './support/cli.js';
import { labeledSamples } from './support/images.js';
import { backend } from './support/setup.js';

const dir = mkdtempSync(join(tmpdir(), 'localmim-small-'));
const labeled = labeledSamples(join(dir, 'labeled'), 20); // 6 classes × 20 crops: 96 training, 24 validation images
const home = join(dir, 'home');
const model = parseRunConfig({ model: { D: 32, depth: 2, heads: 2, decoderDim: 16, decoderHeads: 2, imgSize: 32, patchSize: 8 } }).model;
let store: Store;
let datasetId = 0;
let sourceId = 0;

beforeAll(async () => {
  store = new Store(join(home, 'localmim.db'));
  datasetId = (await indexFolder(store, labeled)).datasetId;
  // A pretraining run whose one checkpoint holds the tiny model's seeded weights (what --from reads).
  const config = parseRunConfig({ model });
  const run = store.createRun({
    name: 'source',
    datasetId: null,
    config,
    backend: 'wasm',
    kind: 'pretrain',
    status: 'finished',
    pid: null,
  });
  const params = paramStore(model, 7);
  const path = join(home, 'source.safetensors');
  const written = await saveCheckpoint(path, { params }, new AdamW(new Map(), config.optim), { step: 1, epoch: 1, loss: null, config });
  params.dispose();
  store.addCheckpoint({ runId: run.id, step: 1, epoch: 1, loss: null, path, ...written });
  sourceId = run.id;
});
afterAll(() => {
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

const finetuneFrom = (finetune: object) =>
  prepare(store, home, { new: 'finetune', datasetId, from: String(sourceId), model, finetune, seed: 0 }, backend.chosen);

test('the recipe is chosen by the labeled set’s size: small-data below the threshold, the official one above or when asked', () => {
  const small = finetuneDefaults(500, 'auto', 100);
  expect(small.defaults).toMatchObject({ recipe: 'small-data', epochs: 20, warmupEpochs: 2, mixup: 0, probeInit: true });
  expect(small.why).toMatch(/^recipe: small-data \(500 labeled images < 50,000\): 300 steps \(20 epochs of 15\)/);
  const large = finetuneDefaults(SMALL_DATA_BELOW, 'auto', 1600);
  expect(large.defaults).toMatchObject({ recipe: 'official', epochs: 50, mixup: 0.8, cutmix: 1, ...finetuneRecipe(1600) });
  expect(large.why).toMatch(/^recipe: official \(50,000 labeled images ≥ 50,000\)/);
  expect(finetuneDefaults(500, 'official', 100).defaults).toMatchObject({ recipe: 'official', ...finetuneRecipe(100) });

  // Through the lifecycle: 96 training images take the small-data recipe; given values and an explicit choice win.
  const p = finetuneFrom({});
  const f = (p.spec.config as FinetuneRun).finetune;
  expect(f).toMatchObject({ recipe: 'small-data', probeInit: true, blr: SMALL_DATA.blr, epochs: Math.round(SMALL_DATA.steps / 3) });
  expect(p.recipe).toMatch(/^recipe: small-data \(96 labeled images < 50,000\)/);
  expect((finetuneFrom({ blr: 3e-4 }).spec.config as FinetuneRun).finetune.blr).toBe(3e-4);
  expect((finetuneFrom({ recipe: 'official' }).spec.config as FinetuneRun).finetune).toMatchObject({
    recipe: 'official',
    probeInit: false,
  });
  expect(() => finetuneFrom({ recipe: 'tiny' })).toThrow('finetune.recipe: expected auto, official, small-data, got "tiny"');
});

test('LP-FT: the head starts as the fitted probe, so step 0’s validation top-1 is the probe’s; memory stays flat', async () => {
  const prepared = finetuneFrom({ batch: 8 });
  const config = prepared.spec.config as FinetuneRun;
  const { train, val } = prepared.job.data as { train: LabeledItem[]; val: LabeledItem[] };
  const cache = new DecodeCache(join(home, 'cache'));
  const [trainImages, valImages] = [await evalImages(train, 32, cache), await evalImages(val, 32, cache)];
  const loader = new Loader(train, cache, 32, 8, 0, { minScale: 0.25, kernel: 'linear', transform: finetuneAugment(config.finetune) });
  const source = paramStore(model, 7);
  const init = new Map(source.entries().map(([n, t]) => [n, t.dataSync() as Float32Array]));
  source.dispose();
  const labels = train.map((t) => t.label);
  const task = finetuneTask(config, { loader, labels, val: { images: valImages, labels: val.map((v) => v.label) } }, init);
  const before = tf.memory().numTensors;
  const head = await headFromProbe(task.model, trainImages, labels, 0, 8);
  expect(tf.memory().numTensors).toBe(before);
  const valInputs = await headInputs(
    task.model,
    valImages,
    val.map((v) => v.label),
    8,
  );
  const logits = tf.tidy(() => task.model.logits(valImages).dataSync());
  probeLogits(head, valInputs).forEach((v, i) => expect(logits[i]!, `logit ${i}`).toBeCloseTo(v, 3));
  expect((await task.evaluate!()).top1).toBe(probeTop1(head, valInputs));

  const counts: number[] = [];
  for (let s = 0; s < 4; s++) {
    (await task.step(0, s % loader.batchesPerEpoch, s, 1e-4)).dispose();
    await task.evaluate!();
    counts.push(tf.memory().numTensors);
  }
  expect(new Set(counts.slice(1)).size).toBe(1);
  task.dispose();
});

test('the best validated checkpoint is kept, listed first and exported; pruning keeps it', () => {
  const run = store.createRun({ name: 'best', datasetId, config: {}, backend: 'wasm', kind: 'finetune', status: 'running', pid: null });
  const recorder = new RunRecorder(store, run.id, 1);
  // Validation top-1 and training loss of three checkpoints: the first is the best validated, the second the lowest loss.
  const scores = [
    [0.6, 1],
    [0.5, 0.5],
    [0.55, 0.8],
  ] as const;
  scores.forEach(([top1, loss], i) => {
    const path = join(dir, `best-${i}`);
    writeFileSync(path, 'x'); // pruning reads the folder too: a row whose file is gone would be dropped
    recorder.handle({ type: 'checkpoint', path, step: i * 10, epoch: i, loss, size: 1, hash: `h${i}`, top1 });
  });
  expect(store.checkpoints(run.id).map((c) => [c.step, c.valTop1])).toEqual([
    [0, 0.6],
    [10, 0.5],
    [20, 0.55],
  ]);
  expect(store.bestCheckpoint(run.id)!.step).toBe(0);
  expect(checkpointRef(store, String(run.id)).candidates.map((c) => c.step)).toEqual([0, 20, 10]);
  expect(checkpointRef(store, `${run.id}:20`).candidates.map((c) => c.step)).toEqual([20]);
});

test('the CLI says which recipe runs and why, and ends with the finetune event beside its baselines', () => {
  const args = ['finetune', '--home', home, '--from', String(sourceId), '--data', labeled, '--batch', '16', '--epochs', '1'];
  const r = localmim([...args, '--json']);
  expect(r.code, r.stderr).toBe(0);
  const events = r.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { type: string; step: number; top1: number; runId: number });
  const evals = events.filter((e) => e.type === 'eval');
  expect(evals.map((e) => e.step)).toEqual([0, 6]);
  const last = events.at(-1) as unknown as {
    type: string;
    top1: number;
    probeTop1: number;
    baselines: Record<string, number>;
    runId: number;
  };
  expect(last).toMatchObject({ type: 'finetune', top1: Math.max(...evals.map((e) => e.top1)), probeTop1: evals[0]!.top1 });
  for (const v of [last.top1, last.probeTop1, last.baselines.pixels!, last.baselines.init!]) {
    expect(v).toBeGreaterThanOrEqual(0);
    expect(v).toBeLessThanOrEqual(1);
  }
  const show = localmim(['runs', 'show', String(last.runId), '--home', home]);
  expect(show.stdout).toMatch(/validation top-1 .* %.*raw pixels \(logistic probe\) .* %, no pretraining .* %/);
  const best = evals.reduce((b, e) => (e.top1 >= b.top1 ? e : b));
  expect(show.stdout).toContain(`* step ${best.step} `);

  // The terminal names the recipe and why (this run stops before its end, so it computes no baselines).
  const again = localmim([...args, '--max-steps', '1']);
  expect(again.code, again.stderr).toBe(0);
  expect(again.stderr).toMatch(/recipe: small-data \(96 labeled images < 50,000\): \d+ steps/);
  expect(localmim([...args, '--recipe', 'huge']).stderr).toMatch(/--recipe: expected auto, official, small-data, got "huge"/);
}, 300_000); // two fine-tunes (the run and its init baseline) on 2 shared cores
