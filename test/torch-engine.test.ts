import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, expect, test, vi } from 'vitest';
import type { ApiEvent } from '../core/api.js';
import { DecodeCache } from '../core/data/cache.js';
import { Loader } from '../core/data/loader.js';
import { homePaths, isAlive, SAMPLE_IMAGES } from '../core/home.js';
import { launchNodeJob } from '../core/jobs/launch.js';
import { encodeSafetensors, type NamedTensor } from '../core/safetensors.js';
import { Service } from '../core/service/service.js';
import { Store } from '../core/store/store.js';
import { localmimAsync } from './support/cli.js';
import { describeWith, PYTHON } from './support/requirements.js';

// The torch engine on Debian's CPU torch (skipped without it, failing under CI=true). Both engines see the same
// pixels: the torch side is handed the app's decoded batches (PIL and sharp resample differently), as
// test/scale-out.test.ts does; initial weights, order, masks and schedule are each engine's own.
const withTorch = describeWith('torch', 'pillow');

const dir = mkdtempSync(join(tmpdir(), 'localmim-torch-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const BIN = fileURLToPath(new URL('../bin/localmim.js', import.meta.url));
const tiny = { D: 32, depth: 4, heads: 2, decoderDim: 32, decoderHeads: 2, imgSize: 32, patchSize: 8 };
const configFile = join(dir, 'tiny.json');
writeFileSync(
  configFile,
  JSON.stringify({ model: tiny, optim: { batch: 8, epochs: 1, warmupEpochs: 0, lr: 3e-3, weightDecay: 0.05 }, seed: 7 }),
);
const batches = join(dir, 'batches.safetensors');
const env = { OMP_NUM_THREADS: '1', LOCALMIM_PYTHON: PYTHON, LOCALMIM_TORCH_BATCHES: batches };

type Step = { type: 'step'; step: number; loss: number; losses: number[] };
const events = (stdout: string) =>
  stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { type: string; step: number; engine?: string; backend?: string; status?: string });
const steps = (stdout: string) => events(stdout).filter((e): e is Step => e.type === 'step');

async function pretrain(home: string, args: string[]) {
  const r = await localmimAsync(['pretrain', '--json', '--home', home, '--data', SAMPLE_IMAGES, ...args], env);
  expect(r.code, r.stderr).toBe(0);
  return r.stdout;
}

function expectSameLosses(ours: Step[], reference: Step[]) {
  const gaps = ours.map((s) => {
    const ref = reference.find((r) => r.step === s.step)!;
    return Math.abs(s.loss - ref.loss) / ref.loss;
  });
  console.log(`largest relative loss gap to the tfjs run: ${Math.max(...gaps).toExponential(1)}`);
  gaps.forEach((gap, i) => expect(gap, `step ${ours[i]!.step}`).toBeLessThan(1e-3));
}

withTorch('the torch engine', () => {
  const refHome = join(dir, 'ref');
  let reference: Step[] = [];

  beforeAll(async () => {
    reference = steps(await pretrain(refHome, ['--config', configFile, '--max-steps', '8']));
    // The app's first batches of epoch 0, decoded as its loader decodes them, handed to train.py.
    const store = new Store(homePaths(refHome).db);
    const dataset = store.dataset(SAMPLE_IMAGES)!;
    const items = store.images(dataset.id, 'ok').map((r) => ({ abs: join(dataset.root, r.path), hash: r.hash! }));
    store.close();
    const loader = new Loader(items, new DecodeCache(homePaths(refHome).cache), 32, 8, 7);
    const handed = new Map<string, NamedTensor>();
    for (let i = 0; i < 8; i++) {
      const images = await loader.get(0, i);
      const values = new Float32Array(8 * 32 * 32 * 3);
      images.forEach((img, b) => values.set(img.data, b * 32 * 32 * 3));
      handed.set(`batch.0.${i}`, { shape: [8, 32, 32, 3], values });
    }
    writeFileSync(batches, encodeSafetensors(handed, {}));
  }, 60_000);

  test('the contract: a start event with "engine":"torch", then five step events', async () => {
    const out = await pretrain(join(dir, 'contract'), [
      '--engine',
      'torch',
      '--img',
      '32',
      '--patch',
      '8',
      '--batch',
      '8',
      '--max-steps',
      '5',
      '--seed',
      '0',
    ]);
    const e = events(out);
    expect(e[0]).toMatchObject({ type: 'start', engine: 'torch', backend: 'torch cpu' });
    expect(e.filter((x) => x.type === 'step').map((x) => x.step)).toEqual([1, 2, 3, 4, 5]);
    expect(e.at(-1)).toMatchObject({ type: 'end', status: 'paused', step: 5 });
  }, 30_000);

  test('five steps on torch equal the same run on tfjs within 1e-3', async () => {
    const home = join(dir, 'equal');
    const ours = steps(await pretrain(home, ['--engine', 'torch', '--config', configFile, '--max-steps', '5']));
    expect(ours.map((s) => s.step)).toEqual([1, 2, 3, 4, 5]);
    expectSameLosses(ours, reference);
    const store = new Store(homePaths(home).db);
    expect(store.runs()[0]).toMatchObject({ backend: 'torch cpu', status: 'paused', step: 5 });
    expect(store.checkpoints(store.runs()[0]!.id).map((c) => c.step)).toEqual([5]);
    store.close();
  }, 30_000);

  test('the fusion variant: five steps on torch equal tfjs within 1e-3', async () => {
    const run = JSON.parse(readFileSync(configFile, 'utf8')) as { model: object };
    const fusion = join(dir, 'fusion.json');
    writeFileSync(fusion, JSON.stringify({ ...run, model: { ...run.model, variant: 'fusion' } }));
    const tfjs = steps(await pretrain(join(dir, 'fusion-tfjs'), ['--config', fusion, '--max-steps', '5']));
    const ours = steps(await pretrain(join(dir, 'fusion-torch'), ['--engine', 'torch', '--config', fusion, '--max-steps', '5']));
    expect(ours.map((s) => s.step)).toEqual([1, 2, 3, 4, 5]);
    expectSameLosses(ours, tfjs);
  }, 60_000);

  test('paused on torch (Ctrl-C), resumed on tfjs: the losses of the uninterrupted run', async () => {
    const home = join(dir, 'torch-then-tfjs');
    const out = await interrupted(home, ['--engine', 'torch', '--config', configFile, '--max-steps', '8']);
    const paused = events(out).at(-1)!;
    expect(paused).toMatchObject({ type: 'end', status: 'paused' });
    expect(paused.step).toBeLessThan(8);
    const rest = steps(await pretrain(home, ['--resume', '1', '--engine', 'tfjs', '--max-steps', '8']));
    expect(rest.map((s) => s.step)).toEqual(Array.from({ length: 8 - paused.step }, (_, i) => paused.step + 1 + i));
    expectSameLosses([...steps(out), ...rest], reference);
  }, 30_000);

  test('paused on tfjs, resumed on torch: the same', async () => {
    const home = join(dir, 'tfjs-then-torch');
    const first = steps(await pretrain(home, ['--config', configFile, '--max-steps', '3']));
    const rest = steps(await pretrain(home, ['--resume', '1', '--engine', 'torch', '--max-steps', '8']));
    expect(rest.map((s) => s.step)).toEqual([4, 5, 6, 7, 8]);
    expectSameLosses([...first, ...rest], reference);
  }, 30_000);
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

withTorch('the torch engine in the app’s service', () => {
  test('a torch run: live metrics, a preview, pause (SIGTERM), resume on torch; a killed job takes train.py with it', async () => {
    process.env.LOCALMIM_PYTHON = PYTHON;
    const service = new Service(join(dir, 'service'), () => launchNodeJob(), { previewEvery: 2, cadence: {} });
    const seen: ApiEvent[] = [];
    service.subscribe((e) => seen.push(e));
    const until = (pred: (e: ApiEvent) => boolean) =>
      vi.waitFor(() => expect(seen.find(pred)).toBeTruthy(), { timeout: 20_000, interval: 50 });
    const call = <T>(method: string, args: unknown) => service.call(method, args) as Promise<T>;
    try {
      const info = await call<{ torch: { ok: boolean; python: string } }>('app.info', {});
      expect(info.torch).toMatchObject({ ok: true, python: PYTHON });
      await call('datasets.addSample', {});
      await until((e) => e.type === 'dataset.indexed');
      const datasetId = (seen.find((e) => e.type === 'dataset.indexed') as { datasetId: number }).datasetId;
      const tinyRun = JSON.parse(readFileSync(configFile, 'utf8')) as { optim: object };
      const config = { ...tinyRun, optim: { ...tinyRun.optim, epochs: 3 } };
      const { runId } = await call<{ runId: number }>('runs.create', { datasetId, config, engine: 'torch' });
      await until((e) => e.type === 'run.preview' && e.runId === runId && e.step === 2);
      const preview = await call<{ probes: { input: string; scales: { pred: string }[] }[] }>('runs.preview', { id: runId, step: 2 });
      expect(preview.probes).toHaveLength(2);
      expect(preview.probes[0]!.scales[0]!.pred).toMatch(/^data:image\/png;base64,/);
      await call('runs.pause', { id: runId });
      await until((e) => e.type === 'run.status' && e.runId === runId && e.status === 'paused');
      const paused = service.store.run(runId)!;
      expect(paused).toMatchObject({ backend: 'torch cpu', status: 'paused' });
      expect(service.store.checkpoints(runId).at(-1)!.step).toBe(paused.step);

      seen.length = 0;
      await call('runs.resume', { id: runId }); // stays on torch
      await until((e) => e.type === 'run.metrics' && e.runId === runId);
      expect((seen.find((e) => e.type === 'run.metrics') as { rows: { step: number }[] }).rows[0]!.step).toBe(paused.step + 1);
      const job = service.store.run(runId)!.pid!;
      const python = Number(
        execFileSync('pgrep', ['-P', String(job)], { encoding: 'utf8' })
          .trim()
          .split('\n')[0],
      );
      process.kill(job, 'SIGKILL');
      await vi.waitFor(() => expect(isAlive(python)).toBe(false), { timeout: 20_000 });
    } finally {
      await service.shutdown();
      delete process.env.LOCALMIM_PYTHON;
    }
  }, 60_000);
});

/** A stand-in interpreter: `probe` is what it answers torch's probe with (or how it fails), `train` how train.py fails. */
function fakePython(path: string, probe: string, train = 'exit 1') {
  mkdirSync(join(path, '..'), { recursive: true });
  writeFileSync(path, `#!/bin/sh\ncase "$2" in --engine) ${train};; esac\n${probe}\n`);
  chmodSync(path, 0o755);
  return path;
}

withTorch('the torch engine’s errors', () => {
  test('doctor names the interpreter it took and each one it rejected, and why', async () => {
    const old = fakePython(join(dir, 'old', 'python3'), `echo '{"version": "1.12.1", "devices": []}'`);
    fakePython(join(dir, 'bare', 'python3'), `echo "ModuleNotFoundError: No module named 'torch'" >&2; exit 1`);
    const r = await localmimAsync(['doctor', '--json'], { LOCALMIM_PYTHON: old, PATH: join(dir, 'bare') });
    const { torch } = JSON.parse(r.stdout) as { torch: { ok: boolean; python: string; rejected: { python: string; reason: string }[] } };
    expect(torch).toMatchObject({ ok: true, python: PYTHON });
    expect(torch.rejected).toEqual([
      { python: old, reason: 'torch 1.12.1 is older than 1.13' },
      { python: join(dir, 'bare', 'python3'), reason: 'no torch' },
    ]);
  }, 30_000);

  test('CUDA out of memory: one line saying what the run kept (here: no checkpoint yet) and how to go on; auto picks a GPU', async () => {
    const gpu = fakePython(
      join(dir, 'gpu', 'python3'),
      `echo '{"version": "2.3.0", "devices": [{"id": "cuda:0", "name": "Fake GPU", "memoryMB": 1024}]}'`,
      'echo "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB" >&2; exit 1',
    );
    const home = join(dir, 'oom');
    const r = await localmimAsync(['pretrain', '--engine', 'auto', '--home', home, '--config', configFile, '--max-steps', '2'], {
      LOCALMIM_PYTHON: gpu,
    });
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n').at(-1)).toBe(
      'localmim pretrain: the torch engine’s device failed (torch engine: torch.cuda.OutOfMemoryError: CUDA out of memory. ' +
        'Tried to allocate 2.00 GiB); the run has no checkpoint yet: continue with localmim pretrain --resume 1 --engine tfjs, ' +
        'or with a smaller batch or image size',
    );
    expect((await localmimAsync(['pretrain', '--engine', 'gpu', '--home', home])).stderr).toMatch(
      /--engine: expected tfjs, torch or auto, got "gpu"/,
    );
  }, 30_000);
});
