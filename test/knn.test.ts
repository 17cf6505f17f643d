import { existsSync, mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest';
import { embedFolder, pca2, readEmbeddings, type EmbedItem } from '../core/analysis/embed.js';
import { knnScore, liveBackbone, scoreProbe, type ProbeSet } from '../core/analysis/knn.js';
import { parseRunConfig } from '../core/config.js';
import { launchNodeJob } from '../core/jobs/launch.js';
import { ParamStore } from '../core/model/module.js';
import { Service } from '../core/service/service.js';
import { decodeSafetensors } from '../core/safetensors.js';
import { Store } from '../core/store/store.js';
import { train, type Task, type TrainEvent } from '../core/train/loop.js';
import { pretrainModel } from '../core/train/pretrain.js';
import { localmim } from './support/cli.js';
import { labeledSamples } from './support/images.js';
import { backend } from './support/setup.js';

const dir = mkdtempSync(join(tmpdir(), 'localmim-knn-'));
const home = join(dir, 'home');
const probe = labeledSamples(join(dir, 'probe'), 8); // 6 classes of 8
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const tinyModel = { D: 32, depth: 4, heads: 2, decoderDim: 16, decoderHeads: 2, imgSize: 32, patchSize: 8 };
const lines = (stdout: string) =>
  stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { type: string; step: number; top1: number; top5: number; probeTop1?: number; seconds: number });

describe('weighted kNN (DINO)', () => {
  const unit = (a: number) => [Math.cos(a), Math.sin(a)];
  test('each neighbour votes exp(sim / T) for its class: the nearer class wins over a majority', () => {
    // Cosine similarities of the first query to r0…r3: 1, 0.8, 0, < 0; of the second: 0, 0.6, 1, < 0.
    const reference = { features: Float32Array.from([1, 0, 0.8, 0.6, 0, 1, -1, -0.1]), dim: 2, labels: [0, 1, 1, 2] };
    const query = { features: Float32Array.from([1, 0, 0, 2]), dim: 2, labels: [1, 1] };
    // k = 3, T = 0.1: the first query's votes are class 0: e^10, class 1: e^8 + e^0, so class 0 wins although class 1
    // has two of the three neighbours; class 1 ranks second, within the top 5. The second's class 1: e^10 + e^6.
    expect(knnScore(reference, query, 3, { k: 3, temperature: 0.1 })).toEqual({ top1: 0.5, top5: 1 });
    // T = 10 flattens the weights: class 1 (e^0.08 + e^0) beats class 0 (e^0.1) for the first query too.
    expect(knnScore(reference, query, 3, { k: 3, temperature: 10 })).toEqual({ top1: 1, top5: 1 });
    // k = 1: only the nearest neighbour votes.
    expect(knnScore(reference, query, 3, { k: 1, temperature: 0.07 })).toEqual({ top1: 0.5, top5: 0.5 });
  });

  test('top-5: a class ranked sixth by its votes misses, the fifth counts', () => {
    // Seven classes at angles 0, 0.2, …, 1.2 from the query: class c ranks c-th.
    const reference = {
      features: Float32Array.from(Array.from({ length: 7 }, (_, c) => unit(0.2 * c)).flat()),
      dim: 2,
      labels: [0, 1, 2, 3, 4, 5, 6],
    };
    const query = (label: number) => ({ features: Float32Array.from([1, 0]), dim: 2, labels: [label] });
    expect(knnScore(reference, query(4), 7)).toEqual({ top1: 0, top5: 1 });
    expect(knnScore(reference, query(5), 7)).toEqual({ top1: 0, top5: 0 });
    expect(knnScore(reference, query(0), 7)).toEqual({ top1: 1, top5: 1 });
  });

  test('PCA: the first component is the direction of largest variance', () => {
    // Points along (3, 4)/5 with a little spread across it.
    const xs = [-2, -1, 0, 1, 2].flatMap((t, i) => [3 * t + 0.1 * (i % 2), 4 * t - 0.1 * (i % 2)]);
    const { points, explained } = pca2({ features: Float32Array.from(xs), dim: 2 });
    expect(explained[0]).toBeGreaterThan(0.99);
    expect(points.map(([p]) => Math.abs(p))).toEqual([10, 5, 0, 5, 10].map((v) => expect.closeTo(v, 1) as unknown as number));
  });
});

test('kNN evaluations leave tf.memory() flat', async () => {
  const config = parseRunConfig({ model: tinyModel });
  const model = pretrainModel(config.model, 0);
  const item = (path: string, label: number) => ({ abs: join(probe, path), hash: `${path}`, label });
  const set: ProbeSet = {
    classes: ['astronaut', 'coffee'],
    reference: [item('astronaut/astronaut-00.jpg', 0), item('coffee/coffee-00.jpg', 1), item('coffee/coffee-01.jpg', 1)],
    query: [item('astronaut/astronaut-01.jpg', 0), item('coffee/coffee-02.jpg', 1)],
  };
  const P = liveBackbone(model.params, config.model);
  await scoreProbe(P, config.model, set);
  const before = tf.memory();
  for (let i = 0; i < 3; i++) await scoreProbe(P, config.model, set);
  const after = tf.memory();
  expect(after.numTensors).toBe(before.numTensors);
  expect(after.numBytes).toBe(before.numBytes);
  expect(tf.getBackend()).toBe(backend.chosen);
  model.dispose();
});

describe('the loop scores kNN at its cadence', () => {
  /** 200 steps of 1 s each (a virtual clock), kNN evaluations of 2 s each; the steps at which kNN was scored. */
  async function scored(every?: number, everySteps?: number) {
    let clock = 0;
    const now = vi.spyOn(performance, 'now').mockImplementation(() => clock);
    const task: Task = {
      model: { params: new ParamStore({}, 0) },
      optimizer: { step: 0, slots: {}, apply: () => undefined, dispose: () => undefined },
      config: {},
      optim: parseRunConfig({ optim: { epochs: 1 } }).optim,
      batchesPerEpoch: 200,
      step: async () => ((clock += 1000), tf.tensor1d([1])),
      dispose: () => undefined,
    };
    const events: TrainEvent[] = [];
    const score = async () => ((clock += 2000), { top1: 0.5, top5: 1 });
    try {
      await train(task, {
        backend: 'test',
        checkpointPath: (step) => join(dir, 'loop', `${every}-${everySteps}-${step}.safetensors`),
        cadence: { everySteps },
        knn: { every, budget: 0.1, score },
        onEvent: (e) => events.push(e),
      });
    } finally {
      now.mockRestore();
    }
    return events.flatMap((e) => (e.type === 'knn' ? [e.step] : []));
  }

  test('by default within 10 % of the training time: each next evaluation must fit the budget', async () => {
    // After n evaluations (2n s), the next needs 2n + 2 ≤ 0.1 · training seconds: at step 20 (n + 1); the last step always.
    expect(await scored()).toEqual([0, 40, 60, 80, 100, 120, 140, 160, 180, 200]);
    // Checkpoints are scored only within the budget too.
    expect(await scored(undefined, 30)).toEqual([0, 40, 60, 80, 100, 120, 140, 160, 180, 200]);
  });

  test('every N steps, and at each checkpoint', async () => {
    expect(await scored(50)).toEqual([0, 50, 100, 150, 200]);
    expect(await scored(50, 30)).toEqual([0, 30, 50, 60, 90, 100, 120, 150, 180, 200]);
  });
});

describe('on a pretraining run with a probe set', () => {
  const tinyFile = join(dir, 'tiny.json');
  let events: ReturnType<typeof lines>;
  beforeAll(() => {
    writeFileSync(tinyFile, JSON.stringify({ model: tinyModel }));
    const args = ['pretrain', '--home', home, '--config', tinyFile, '--img', '32', '--patch', '8', '--batch', '8', '--max-steps', '20'];
    const r = localmim([...args, '--probe-data', probe, '--knn-every', '10', '--json']);
    expect(r.code, r.stderr).toBe(0);
    events = lines(r.stdout);
  });

  test('the CLI contract: knn events with top1 at steps 0, 10 and 20, stored with the metrics', () => {
    const knn = events.filter((e) => e.type === 'knn');
    expect(knn.map((e) => e.step)).toEqual([0, 10, 20]);
    for (const e of knn) {
      expect(e.top1).toBeGreaterThanOrEqual(0);
      expect(e.top1).toBeLessThanOrEqual(e.top5);
      expect(e.top5).toBeLessThanOrEqual(1);
      expect(e.seconds).toBeGreaterThan(0);
      expect(e.probeTop1).toBeGreaterThanOrEqual(0);
      expect(e.probeTop1).toBeLessThanOrEqual(1);
    }
    // Step 0 comes before the first training step.
    expect(events.findIndex((e) => e.type === 'knn')).toBeLessThan(events.findIndex((e) => e.type === 'step'));
    const store = new Store(join(home, 'localmim.db'));
    try {
      expect(store.knn(1).map((k) => [k.step, k.top1, k.top5, k.probeTop1])).toEqual(knn.map((e) => [e.step, e.top1, e.top5, e.probeTop1]));
      expect(store.run(1)!.probe).toEqual({ datasetId: 2, every: 10 });
    } finally {
      store.close();
    }
  });

  test('a resumed run keeps its probe set and cadence', () => {
    const r = localmim(['pretrain', '--home', home, '--resume', '1', '--max-steps', '30', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(
      lines(r.stdout)
        .filter((e) => e.type === 'knn')
        .map((e) => e.step),
    ).toEqual([30]);
    expect(localmim(['pretrain', '--home', home, '--resume', '1', '--probe-data', probe]).stderr).toMatch(/keeps the probe set/);
  });

  test('bad probe flags are usage errors', () => {
    expect(localmim(['pretrain', '--home', home, '--knn-every', '5'])).toMatchObject({
      code: 2,
      stderr: expect.stringMatching(/--probe-data/),
    });
    const flat = localmim(['pretrain', '--home', home, '--config', tinyFile, '--probe-data', join(probe, 'coffee'), '--max-steps', '1']);
    expect(flat.stderr).toMatch(/probe: .*at least two class sub-folders/);
  });

  test('embed writes [N, D] features and the paths; a rerun skips the work done', () => {
    const out = join(dir, 'emb.safetensors');
    const embed = () => localmim(['embed', '1', '--home', home, '--data', probe, '--out', out, '--json']);
    const first = embed();
    expect(first.code, first.stderr).toBe(0);
    expect(JSON.parse(first.stdout)).toMatchObject({ images: 48, dim: 32, computed: 48 });
    const t = decodeSafetensors(readFileSync(out)).tensors.get('features')!;
    expect(t.shape).toEqual([48, 32]);
    const paths = readFileSync(join(dir, 'emb.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { path: string; label: string });
    expect(paths).toHaveLength(48);
    expect(paths[0]).toEqual({ path: 'astronaut/astronaut-00.jpg', label: 'astronaut' });
    expect(JSON.parse(embed().stdout)).toMatchObject({ images: 48, computed: 0 });
    expect(existsSync(`${out}.parts`)).toBe(false);
    // .npy: NumPy's header, then float32 rows.
    const npy = join(dir, 'emb.npy');
    expect(localmim(['embed', '1', '--home', home, '--data', probe, '--out', npy]).code).toBe(0);
    expect(readFileSync(npy).subarray(0, 80).toString('latin1')).toMatch(/^\x93NUMPY.*'shape': \(48, 32\)/);
  });

  test('an interrupted embedding resumes from its finished shards', async () => {
    const config = parseRunConfig({ model: tinyModel });
    const model = pretrainModel(config.model, 0);
    const P = liveBackbone(model.params, config.model);
    const store = new Store(join(home, 'localmim.db'));
    const root = realpathSync(probe);
    const items: EmbedItem[] = store
      .images(store.dataset(root)!.id, 'ok')
      .map((r) => ({ abs: join(root, r.path), hash: r.hash!, path: r.path, label: r.label }));
    store.close();
    const out = join(dir, 'resumed.safetensors');
    const o = { out, weights: 'w', shard: 20 };
    const crash = embedFolder(P, config.model, items, {
      ...o,
      onProgress: (done) => {
        if (done > 20) throw new Error('killed');
      },
    });
    await expect(crash).rejects.toThrow('killed');
    const resumed = await embedFolder(P, config.model, items, o);
    expect(resumed).toMatchObject({ images: 48, computed: 28 });
    const whole = await embedFolder(P, config.model, items, { ...o, out: join(dir, 'whole.safetensors') });
    expect(readEmbeddings(out).features).toEqual(readEmbeddings(whole.out).features);
    // Other weights: nothing is reused.
    expect(await embedFolder(P, config.model, items, { ...o, weights: 'other' })).toMatchObject({ computed: 48 });
    model.dispose();
  });

  test('the API: knn rows in runs.get, similar images and the 2-D map, checked in the service', async () => {
    const s = new Service(home, () => launchNodeJob());
    try {
      const datasetId = s.store.dataset(realpathSync(probe))!.id;
      const run = (await s.call('runs.get', { id: 1 })) as { knn: { step: number }[] };
      expect(run.knn.map((k) => k.step)).toEqual([0, 10, 20, 30]);
      const path = 'coffee/coffee-03.jpg';
      const similar = (await s.call('embeddings.similar', { runId: 1, datasetId, path, k: 5 })) as {
        query: { path: string; src: string };
        neighbours: { path: string; label: string; score: number; src: string }[];
      };
      expect(similar.query).toMatchObject({ path, src: expect.stringMatching(/^data:image\/jpeg;base64,/) });
      expect(similar.neighbours).toHaveLength(5);
      expect(similar.neighbours.map((n) => n.path)).not.toContain(path);
      const scores = similar.neighbours.map((n) => n.score);
      expect(scores).toEqual([...scores].sort((a, b) => b - a));
      expect(similar.neighbours[0]!.src).toMatch(/^data:image\/jpeg;base64,/);
      const map = (await s.call('embeddings.map', { runId: 1, datasetId })) as {
        points: { path: string; label: string; x: number; y: number }[];
        explained: number[];
      };
      expect(map.points).toHaveLength(48);
      expect(map.points.every((p) => Number.isFinite(p.x) && Number.isFinite(p.y))).toBe(true);
      expect(map.explained[0]).toBeGreaterThanOrEqual(map.explained[1]!);
      const created = (await s.call('embeddings.create', { runId: 1, datasetId })) as { images: number; dim: number; out: string };
      expect(created).toMatchObject({ images: 48, dim: 32, computed: 0 }); // written by embeddings.similar
      expect(created.out).toMatch(/embeddings\/run1-30-dataset\d+\.safetensors$/);
      await expect(s.call('embeddings.similar', { runId: 1, datasetId, path: 'nope.jpg' })).rejects.toThrow(/not an image/);
      await expect(s.call('embeddings.similar', { runId: 9, datasetId, path })).rejects.toThrow(/9/);
      await expect(s.call('embeddings.map', { runId: 1, datasetId, step: 7 })).rejects.toThrow(/step 7|7/);
      await expect(s.call('runs.create', { datasetId, config: {}, probe: { datasetId: 99 } })).rejects.toThrow(/dataset 99/);
    } finally {
      await s.shutdown();
    }
  });
});
