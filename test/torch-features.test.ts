import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { nearest, pathsFile, readEmbeddings } from '../core/analysis/embed.js';
import { embedItems, liveBackbone } from '../core/analysis/knn.js';
import type { RunConfig } from '../core/config.js';
import { homePaths, SAMPLE_IMAGES } from '../core/home.js';
import { paramsOf } from '../core/export/backbone.js';
import { launchNodeJob } from '../core/jobs/launch.js';
import { featuresOf } from '../core/model/classifier.js';
import { pretrainModel } from '../core/train/pretrain.js';
import { decodeSafetensors } from '../core/safetensors.js';
import { Service } from '../core/service/service.js';
import { TRAIN_PY, writeInitial } from '../core/scale-out/folder.js';
import { loadCheckpoint } from '../core/train/checkpoint.js';
import { localmimAsync } from './support/cli.js';
import { labeledSamples } from './support/images.js';
import { describeWith, PYTHON } from './support/requirements.js';
import './support/setup.js';

// Feature extraction on the torch engine: train.py computes the features, the app scores and fits them with the tfjs
// engine's code (the kNN monitor, the logistic probe).
const dir = mkdtempSync(join(tmpdir(), 'localmim-torch-knn-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const probe = labeledSamples(join(dir, 'probe'), 8); // 6 classes of 8
const PROBE_FEATURES = fileURLToPath(new URL('./scale/probe_features.py', import.meta.url));
const tiny = { D: 32, depth: 2, heads: 2, decoderDim: 32, decoderHeads: 2, imgSize: 32, patchSize: 8 };
// A Swin of two stages, the first with shifted windows.
const swin = {
  size: 'swin-tiny',
  D: 32,
  depths: [2, 2],
  stageHeads: [1, 2],
  windowSize: 4,
  decoderDim: 32,
  decoderHeads: 2,
  imgSize: 32,
  patchSize: 4,
};
const configFile = (name: string, model: object) => {
  const file = join(dir, `${name}.json`);
  writeFileSync(file, JSON.stringify({ model, optim: { batch: 8, epochs: 1, warmupEpochs: 0, lr: 3e-3 }, seed: 7 }));
  return file;
};
const env = { OMP_NUM_THREADS: '1', LOCALMIM_PYTHON: PYTHON };

type Knn = { type: 'knn'; step: number; top1: number; top5: number; probeTop1?: number; seconds: number };
async function knnEvents(home: string, engine: string, config = configFile('tiny', tiny), steps = 5): Promise<Knn[]> {
  const args = ['pretrain', '--json', '--home', home, '--config', config, '--data', SAMPLE_IMAGES, '--engine', engine];
  const r = await localmimAsync([...args, '--probe-data', probe, '--knn-every', '2', '--max-steps', String(steps)], env);
  expect(r.code, r.stderr).toBe(0);
  return r.stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Knn)
    .filter((e) => e.type === 'knn');
}

const jsonLines = (stdout: string) =>
  stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { type: string } & Record<string, unknown>);

/** ‖a − b‖ / ‖a‖, the largest over the rows of two [N, dim] arrays. */
function worstGap(a: Float32Array, b: Float32Array, dim: number): number {
  let worst = 0;
  for (let i = 0; i < a.length / dim; i++) {
    const [x, y] = [a.subarray(i * dim, (i + 1) * dim), b.subarray(i * dim, (i + 1) * dim)];
    worst = Math.max(worst, Math.hypot(...x.map((v, k) => v - y[k]!)) / Math.hypot(...x));
  }
  return worst;
}

/**
 * The same monitor on both engines: knn events at the same steps, the same step-0 scores, and the step-0 weights (the
 * run's initial checkpoint) through train.py's feature extraction and the tfjs monitor's within 1e-4, on the images
 * the run handed over (the probe set, decoded once by the app).
 */
async function sameMonitor(ours: Knn[], theirs: Knn[], home: string, dim: number) {
  expect(theirs.map((e) => e.step)).toEqual(ours.map((e) => e.step));
  for (const e of theirs) expect(e.seconds).toBeGreaterThan(0);
  const pick = ({ top1, top5, probeTop1 }: Knn) => ({ top1, top5, probeTop1 });
  console.log(`step 0: tfjs ${JSON.stringify(pick(ours[0]!))}, torch ${JSON.stringify(pick(theirs[0]!))}`);
  expect(pick(theirs[0]!)).toEqual(pick(ours[0]!));
  expect(theirs[0]!.probeTop1).toBeDefined();

  const run = homePaths(home).run(1);
  expect(readdirSync(run).filter((f) => f.startsWith('knn-'))).toEqual([]); // each scored once, then removed
  const spec = JSON.parse(readFileSync(join(run, 'torch-job.json'), 'utf8')) as { config: RunConfig };
  const init = join(home, 'init.safetensors');
  await writeInitial(spec.config, init);
  const out = join(home, 'features.safetensors');
  const py = spawnSync(PYTHON, [PROBE_FEATURES, TRAIN_PY, join(run, 'torch-job.json'), init, out], {
    encoding: 'utf8',
    env: { ...process.env, ...env },
  });
  expect(py.status, py.stderr).toBe(0);
  const torchFeatures = decodeSafetensors(readFileSync(out)).tensors.get('features')!;
  const images = decodeSafetensors(readFileSync(join(run, 'torch-knn.safetensors'))).tensors.get('images')!;
  const [n, side] = images.shape as [number, number];
  expect(torchFeatures.shape).toEqual([n, dim]);
  const model = pretrainModel(spec.config.model, spec.config.seed);
  const rgb = Array.from({ length: n }, (_, i) => ({
    width: side,
    height: side,
    data: images.values.subarray(i * side * side * 3, (i + 1) * side * side * 3),
  }));
  const t = tf.tidy(() => featuresOf(liveBackbone(model.params, spec.config.model), spec.config.model, rgb));
  const tfjsFeatures = (await t.data()) as Float32Array;
  t.dispose();
  model.dispose();
  const worst = worstGap(tfjsFeatures, torchFeatures.values, dim);
  console.log(`largest relative feature gap over ${n} probe images: ${worst.toExponential(1)}`);
  expect(worst).toBeLessThan(1e-4);
}

describeWith('torch', 'pillow')('feature extraction on the torch engine', () => {
  // The same run with a probe set on each engine; the torch one's run 1 is what the later tests probe and embed.
  const home = join(dir, 'torch');
  let ours: Knn[] = [];
  let theirs: Knn[] = [];
  beforeAll(async () => {
    [ours, theirs] = [await knnEvents(join(dir, 'tfjs'), 'tfjs'), await knnEvents(home, 'torch')];
  }, 300_000);

  test("the kNN monitor: scored at the tfjs monitor's steps; at step 0 the same features within 1e-4 and the same top-1", async () => {
    expect(theirs.map((e) => e.step)).toEqual([0, 2, 4, 5]); // step 0, every 2, the last checkpoint
    await sameMonitor(ours, theirs, home, tiny.D);
  }, 300_000);

  // On the monitored run's last checkpoint; the tfjs probe first, so that the torch one embeds only its source (the
  // baseline of the untrained backbone is cached by then).
  test('finetune --linear-probe --engine torch: the features of tfjs within 1e-4, the same top-1 and baselines', async () => {
    const embeddings = join(home, 'embeddings');
    const probeRun = async (engine: string) => {
      const args = ['finetune', '--json', '--home', home, '--from', '1', '--data', probe, '--linear-probe', '--engine', engine];
      const r = await localmimAsync(args, env);
      expect(r.code, r.stderr).toBe(0);
      const events = jsonLines(r.stdout);
      expect(events.map((e) => e.type)).toEqual(['start', 'step', 'eval', 'checkpoint', 'end', 'probe']);
      return events;
    };
    const ours = await probeRun('tfjs');
    const before = new Set(readdirSync(embeddings));
    const theirs = await probeRun('torch');
    expect(theirs[0]).toMatchObject({ engine: 'torch' });
    const pick = (e: Record<string, unknown>) => ({ top1: e.top1, baselines: e.baselines, lambda: e.lambda, holdoutTop1: e.holdoutTop1 });
    console.log(`linear probe: tfjs ${JSON.stringify(pick(ours.at(-1)!))}, torch ${JSON.stringify(pick(theirs.at(-1)!))}`);
    expect(pick(theirs.at(-1)!)).toEqual(pick(ours.at(-1)!));

    const added = readdirSync(embeddings).filter((f) => !before.has(f) && f.endsWith('.safetensors'));
    expect(added).toHaveLength(1);
    const torchFeatures = readEmbeddings(join(embeddings, added[0]!));
    const items = readFileSync(pathsFile(join(embeddings, added[0]!)), 'utf8')
      .trim()
      .split('\n')
      .map((l) => ({ abs: (JSON.parse(l) as { path: string }).path, hash: '' }));
    const run = homePaths(home).run(1);
    const last = readdirSync(run)
      .filter((f) => /^ckpt-\d+\.safetensors$/.test(f))
      .sort()
      .at(-1)!;
    const { tensors, state } = loadCheckpoint(join(run, last));
    const tfjsFeatures = await embedItems(paramsOf(tensors), (state.config as RunConfig).model, items);
    const worst = worstGap(tfjsFeatures.features, torchFeatures.features, torchFeatures.dim);
    console.log(`linear probe: largest relative feature gap over ${items.length} images: ${worst.toExponential(1)}`);
    expect(worst).toBeLessThan(1e-4);
  }, 300_000);

  test("the app's embeddings (embeddings.create, .similar) on the torch engine: tfjs's within 1e-4, in a file of their own", async () => {
    const service = new Service(home, () => launchNodeJob());
    try {
      const datasetId = service.store.dataset(probe)!.id;
      type Created = { out: string; images: number; dim: number; computed: number };
      const create = (engine?: string) =>
        service.call('embeddings.create', { runId: 1, datasetId, ...(engine && { engine }) }) as Promise<Created>;
      const [ours, theirs] = [await create(), await create('torch')];
      expect(theirs).toMatchObject({ images: 48, dim: tiny.D, computed: 48 });
      expect(theirs.out).not.toBe(ours.out);
      const [a, b] = [readEmbeddings(ours.out), readEmbeddings(theirs.out)];
      const worst = worstGap(a.features, b.features, a.dim);
      console.log(`embeddings: largest relative feature gap over 48 images: ${worst.toExponential(1)}`);
      expect(worst).toBeLessThan(1e-4);
      expect(await create('auto')).toMatchObject({ out: ours.out, computed: 0 }); // no GPU here: tfjs, already written
      // .similar on torch reads the torch file: the neighbours tfjs's features give.
      const paths = readFileSync(pathsFile(ours.out), 'utf8')
        .trim()
        .split('\n')
        .map((l) => (JSON.parse(l) as { path: string }).path);
      const similar = (await service.call('embeddings.similar', { runId: 1, datasetId, path: paths[0]!, k: 5, engine: 'torch' })) as {
        neighbours: { path: string }[];
      };
      expect(similar.neighbours.map((n) => n.path)).toEqual(nearest(a, 0, 5).map((n) => paths[n.index]));
    } finally {
      await service.shutdown();
    }
  }, 120_000);
});

describeWith('torch', 'pillow')('feature extraction of a Swin on the torch engine', () => {
  test("the kNN monitor of a Swin pretraining: the tfjs monitor's steps, the step-0 features within 1e-4, the same top-1", async () => {
    const [home, config] = [join(dir, 'swin-torch'), configFile('swin', swin)];
    const [ours, theirs] = [await knnEvents(join(dir, 'swin-tfjs'), 'tfjs', config, 3), await knnEvents(home, 'torch', config, 3)];
    expect(theirs.map((e) => e.step)).toEqual([0, 2, 3]);
    await sameMonitor(ours, theirs, home, 2 * swin.D); // the last stage's width
  }, 300_000);
});
