import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import { afterAll, expect, test } from 'vitest';
import { liveBackbone } from '../core/analysis/knn.js';
import type { RunConfig } from '../core/config.js';
import { homePaths, SAMPLE_IMAGES } from '../core/home.js';
import { featuresOf } from '../core/model/classifier.js';
import { LocalMIM } from '../core/model/localmim.js';
import { decodeSafetensors } from '../core/safetensors.js';
import { TRAIN_PY, writeInitial } from '../core/scale-out/folder.js';
import { localmimAsync } from './support/cli.js';
import { labeledSamples } from './support/images.js';
import { describeWith, PYTHON } from './support/requirements.js';
import './support/setup.js';

// The kNN monitor on the torch engine: train.py computes the probe set's features at the tfjs monitor's steps, the
// app scores them with the tfjs monitor's code.
const dir = mkdtempSync(join(tmpdir(), 'localmim-torch-knn-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const probe = labeledSamples(join(dir, 'probe'), 8); // 6 classes of 8
const PROBE_FEATURES = fileURLToPath(new URL('./scale/probe_features.py', import.meta.url));
const tiny = { D: 32, depth: 2, heads: 2, decoderDim: 32, decoderHeads: 2, imgSize: 32, patchSize: 8 };
const configFile = join(dir, 'tiny.json');
writeFileSync(configFile, JSON.stringify({ model: tiny, optim: { batch: 8, epochs: 1, warmupEpochs: 0, lr: 3e-3 }, seed: 7 }));
const env = { OMP_NUM_THREADS: '1', LOCALMIM_PYTHON: PYTHON };

type Knn = { type: 'knn'; step: number; top1: number; top5: number; probeTop1?: number; seconds: number };
async function knnEvents(home: string, engine: string): Promise<Knn[]> {
  const args = ['pretrain', '--json', '--home', home, '--config', configFile, '--data', SAMPLE_IMAGES, '--engine', engine];
  const r = await localmimAsync([...args, '--probe-data', probe, '--knn-every', '2', '--max-steps', '5'], env);
  expect(r.code, r.stderr).toBe(0);
  return r.stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Knn)
    .filter((e) => e.type === 'knn');
}

describeWith('torch', 'pillow')('the kNN monitor on the torch engine', () => {
  test('scored at the tfjs monitor’s steps; at step 0 the same features within 1e-4 and the same top-1', async () => {
    const home = join(dir, 'torch');
    const [ours, theirs] = [await knnEvents(join(dir, 'tfjs'), 'tfjs'), await knnEvents(home, 'torch')];
    expect(theirs.map((e) => e.step)).toEqual([0, 2, 4, 5]); // step 0, every 2, the last checkpoint
    expect(theirs.map((e) => e.step)).toEqual(ours.map((e) => e.step));
    for (const e of theirs) expect(e.seconds).toBeGreaterThan(0);
    const pick = ({ top1, top5, probeTop1 }: Knn) => ({ top1, top5, probeTop1 });
    console.log(`step 0: tfjs ${JSON.stringify(pick(ours[0]!))}, torch ${JSON.stringify(pick(theirs[0]!))}`);
    expect(pick(theirs[0]!)).toEqual(pick(ours[0]!));
    expect(theirs[0]!.probeTop1).toBeDefined();

    // The step-0 weights (the run's initial checkpoint) through train.py's feature extraction and through the tfjs
    // monitor's, on the images the run handed over (the probe set, decoded once by the app).
    const run = homePaths(home).run(1);
    expect(readdirSync(run).filter((f) => f.startsWith('knn-'))).toEqual([]); // each scored once, then removed
    const spec = JSON.parse(readFileSync(join(run, 'torch-job.json'), 'utf8')) as { config: RunConfig };
    const init = join(dir, 'init.safetensors');
    await writeInitial(spec.config, init);
    const out = join(dir, 'features.safetensors');
    const py = spawnSync(PYTHON, [PROBE_FEATURES, TRAIN_PY, join(run, 'torch-job.json'), init, out], {
      encoding: 'utf8',
      env: { ...process.env, ...env },
    });
    expect(py.status, py.stderr).toBe(0);
    const torchFeatures = decodeSafetensors(readFileSync(out)).tensors.get('features')!;
    const images = decodeSafetensors(readFileSync(join(run, 'torch-knn.safetensors'))).tensors.get('images')!;
    const [n, side] = images.shape as [number, number];
    expect(torchFeatures.shape).toEqual([n, tiny.D]);
    const model = new LocalMIM(spec.config.model, spec.config.seed);
    const rgb = Array.from({ length: n }, (_, i) => ({
      width: side,
      height: side,
      data: images.values.subarray(i * side * side * 3, (i + 1) * side * side * 3),
    }));
    const t = tf.tidy(() => featuresOf(liveBackbone(model.params, spec.config.model), spec.config.model, rgb));
    const tfjsFeatures = (await t.data()) as Float32Array;
    t.dispose();
    model.dispose();
    let worst = 0;
    for (let i = 0; i < n; i++) {
      const [a, b] = [tfjsFeatures.subarray(i * tiny.D, (i + 1) * tiny.D), torchFeatures.values.subarray(i * tiny.D, (i + 1) * tiny.D)];
      worst = Math.max(worst, Math.hypot(...a.map((v, k) => v - b[k]!)) / Math.hypot(...a));
    }
    console.log(`largest relative feature gap over ${n} probe images: ${worst.toExponential(1)}`);
    expect(worst).toBeLessThan(1e-4);
  }, 300_000);
});
