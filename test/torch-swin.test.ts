import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { DecodeCache } from '../core/data/cache.js';
import { Loader } from '../core/data/loader.js';
import { homePaths, SAMPLE_IMAGES } from '../core/home.js';
import { encodeSafetensors, type NamedTensor } from '../core/safetensors.js';
import { Store } from '../core/store/store.js';
import { localmimAsync } from './support/cli.js';
import { describeWith, PYTHON } from './support/requirements.js';

// Swin pretraining on the torch engine against tfjs, as test/torch-engine.test.ts does for ViT: train.py is handed the
// app's decoded batches. 64 px, patch 4, window 4 over three stages: the first stage's 48 visible tokens are packed
// into groups of windows (grouping mode), the others attend in one masked group, and one stage is shifted.
const withTorch = describeWith('torch', 'pillow');

const dir = mkdtempSync(join(tmpdir(), 'localmim-torch-swin-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const [SIDE, BATCH, STEPS] = [64, 4, 6];
const model = {
  size: 'swin-tiny',
  D: 32,
  depths: [2, 2, 2],
  stageHeads: [1, 2, 4],
  windowSize: 4,
  decoderDim: 32,
  decoderHeads: 2,
  imgSize: SIDE,
  patchSize: 4,
};
const config = (extra: object) => {
  const file = join(dir, `config-${Object.values(extra).join('-') || 'local'}.json`);
  const run = { model: { ...model, ...extra }, optim: { batch: BATCH, epochs: 1, warmupEpochs: 0, lr: 3e-3, weightDecay: 0.05 }, seed: 7 };
  writeFileSync(file, JSON.stringify(run));
  return file;
};
const BIN = fileURLToPath(new URL('../bin/localmim.js', import.meta.url));
const batches = join(dir, 'batches.safetensors');
const env = { OMP_NUM_THREADS: '1', LOCALMIM_PYTHON: PYTHON, LOCALMIM_TORCH_BATCHES: batches };

type Step = { type: 'step'; step: number; loss: number };
const events = (stdout: string) =>
  stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { type: string; step: number; loss: number; engine?: string; status?: string });
const steps = (stdout: string) => events(stdout).filter((e): e is Step => e.type === 'step');

async function pretrain(home: string, args: string[], handed = true) {
  const r = await localmimAsync(
    ['pretrain', '--json', '--home', home, '--data', SAMPLE_IMAGES, ...args],
    handed ? env : { ...env, LOCALMIM_TORCH_BATCHES: '' },
  );
  expect(r.code, r.stderr).toBe(0);
  return r.stdout;
}

function expectSameLosses(ours: Step[], reference: Step[]) {
  const gaps = ours.map(
    (s) => Math.abs(s.loss - reference.find((r) => r.step === s.step)!.loss) / reference.find((r) => r.step === s.step)!.loss,
  );
  console.log(`largest relative loss gap to the tfjs run: ${Math.max(...gaps).toExponential(1)}`);
  gaps.forEach((gap, i) => expect(gap, `step ${ours[i]!.step}`).toBeLessThan(1e-3));
}

withTorch('Swin on the torch engine', () => {
  const local = config({});
  let reference: Step[] = [];

  beforeAll(async () => {
    const refHome = join(dir, 'ref');
    reference = steps(await pretrain(refHome, ['--config', local, '--max-steps', String(STEPS)]));
    // The app's first batches of epoch 0, decoded as its loader decodes them, handed to train.py.
    const store = new Store(homePaths(refHome).db);
    const dataset = store.dataset(SAMPLE_IMAGES)!;
    const items = store.images(dataset.id, 'ok').map((r) => ({ abs: join(dataset.root, r.path), hash: r.hash! }));
    store.close();
    const loader = new Loader(items, new DecodeCache(homePaths(refHome).cache), SIDE, BATCH, 7);
    const handed = new Map<string, NamedTensor>();
    for (let i = 0; i < STEPS; i++) {
      const values = new Float32Array(BATCH * SIDE * SIDE * 3);
      (await loader.get(0, i)).forEach((img, b) => values.set(img.data, b * SIDE * SIDE * 3));
      handed.set(`batch.0.${i}`, { shape: [BATCH, SIDE, SIDE, 3], values });
    }
    writeFileSync(batches, encodeSafetensors(handed, {}));
  }, 90_000);

  test('five steps on torch equal the same run on tfjs within 1e-3', async () => {
    const ours = steps(await pretrain(join(dir, 'equal'), ['--engine', 'torch', '--config', local, '--max-steps', '5']));
    expect(ours.map((s) => s.step)).toEqual([1, 2, 3, 4, 5]);
    expectSameLosses(ours, reference);
  }, 90_000);

  test('the fusion variant: three steps on torch equal tfjs within 1e-3', async () => {
    const fusion = config({ variant: 'fusion' });
    const tfjs = steps(await pretrain(join(dir, 'fusion-tfjs'), ['--config', fusion, '--max-steps', '3']));
    const ours = steps(await pretrain(join(dir, 'fusion-torch'), ['--engine', 'torch', '--config', fusion, '--max-steps', '3']));
    expect(ours.map((s) => s.step)).toEqual([1, 2, 3]);
    expectSameLosses(ours, tfjs);
  }, 90_000);

  test('paused on torch (Ctrl-C), resumed on tfjs: the losses of the uninterrupted run', async () => {
    const home = join(dir, 'torch-then-tfjs');
    const out = await interrupted(home, ['--engine', 'torch', '--config', local, '--max-steps', String(STEPS)]);
    const paused = events(out).at(-1)!;
    expect(paused).toMatchObject({ type: 'end', status: 'paused' });
    expect(paused.step).toBeLessThan(STEPS);
    const rest = steps(await pretrain(home, ['--resume', '1', '--engine', 'tfjs', '--max-steps', String(STEPS)]));
    expect(rest.map((s) => s.step)).toEqual(Array.from({ length: STEPS - paused.step }, (_, i) => paused.step + 1 + i));
    expectSameLosses([...steps(out), ...rest], reference);
  }, 90_000);

  test('paused on tfjs, resumed on torch: the same', async () => {
    const home = join(dir, 'tfjs-then-torch');
    const first = steps(await pretrain(home, ['--config', local, '--max-steps', '3']));
    const rest = steps(await pretrain(home, ['--resume', '1', '--engine', 'torch', '--max-steps', String(STEPS)]));
    expect(rest.map((s) => s.step)).toEqual([4, 5, 6]);
    expectSameLosses([...first, ...rest], reference);
  }, 90_000);

  test('the contract: swin-tiny at 112 px trains with a start event naming "engine":"torch"', async () => {
    const out = await pretrain(
      join(dir, 'contract'),
      ['--model', 'swin-tiny', '--engine', 'torch', '--img', '112', '--batch', '4', '--max-steps', '3'],
      false,
    );
    const e = events(out);
    expect(e[0]).toMatchObject({ type: 'start', engine: 'torch' });
    expect(e.filter((x) => x.type === 'step').map((x) => x.step)).toEqual([1, 2, 3]);
  }, 90_000);
});

/** A run interrupted with Ctrl-C once its second step is reported: it checkpoints and ends paused. */
function interrupted(home: string, args: string[]): Promise<string> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, 'pretrain', '--json', '--home', home, '--data', SAMPLE_IMAGES, ...args], {
      env: { ...process.env, ...env },
    });
    let out = '';
    let sent = false;
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (!sent && steps(out).length >= 2) sent = child.kill('SIGINT');
    });
    child.on('close', () => resolve(out));
  });
}
