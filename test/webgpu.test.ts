import * as tf from '@tensorflow/tfjs';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, test } from 'vitest';
import { missingCudaLibraries, useBackend } from '../core/backend.js';
import { parseRunConfig } from '../core/config.js';
import { indexFolder } from '../core/data/indexer.js';
import { SAMPLE_IMAGES } from '../core/home.js';
import { disposeBatch, LocalMIM } from '../core/model/localmim.js';
import { Rng } from '../core/random.js';
import { prepare } from '../core/runs/lifecycle.js';
import { Store } from '../core/store/store.js';
import { TrainStep } from '../core/train/step.js';
import { localmim } from './support/cli.js';
import { expectForwardMatchesOfficial } from './support/forward-tiny.js';
import { syntheticImages } from './support/images.js';
import { describeWith, SWIFTSHADER_ICD } from './support/requirements.js';
import { expectHogMatches, expectPixelsMatch, golden } from './support/targets-golden.js';

// The webgpu backend on SwiftShader, the software Vulkan driver in Debian's chromium package: as slow as a CPU
// emulation of a GPU is, but the same WGSL kernels a real GPU runs. Tiny shapes keep it quick.
const dir = mkdtempSync(join(tmpdir(), 'localmim-webgpu-'));
const env = { VK_ICD_FILENAMES: SWIFTSHADER_ICD, XDG_RUNTIME_DIR: dir };
Object.assign(process.env, env);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const tiny = { D: 32, depth: 4, heads: 2, decoderDim: 16, decoderHeads: 2, imgSize: 32, patchSize: 8 };

/** Gradients of one LocalMIM step on the current backend, by parameter name, and the per-scale losses. */
async function stepGradients(): Promise<{ grads: Map<string, Float32Array>; losses: number[] }> {
  const cfg = parseRunConfig({ model: tiny, optim: { batch: 2 } });
  const model = new LocalMIM(cfg.model, 5);
  const trainer = new TrainStep(model, cfg.optim);
  const batch = model.prepare(syntheticImages(2, 32, 9), new Rng(4).fill(2 * model.dims.L));
  const { grads, losses } = trainer.gradients([batch]);
  const byName = new Map<string, Float32Array>();
  for (const [name, v] of model.params.vars) byName.set(name, (await grads[v.name]!.data()) as Float32Array);
  const scaleLosses = [...(await losses.data())];
  tf.dispose([...Object.values(grads), losses]);
  disposeBatch(batch);
  trainer.dispose();
  model.dispose();
  return { grads: byName, losses: scaleLosses };
}

const l2 = (a: Float32Array) => Math.sqrt(a.reduce((s, x) => s + x * x, 0));

describeWith('vulkan')('webgpu (SwiftShader)', () => {
  test('forced, it runs on the software adapter and says which; chosen automatically, a software adapter never is', async () => {
    expect(await useBackend('webgpu')).toBeUndefined();
    const doctor = JSON.parse(localmim(['doctor', '--json'], env).stdout) as {
      chosen: string;
      attempts: { name: string; reason?: string }[];
    };
    expect(doctor.chosen).not.toBe('webgpu');
    expect(doctor.attempts.find((a) => a.name === 'webgpu')!.reason).toMatch(/only a software adapter \(google swiftshader/);
    const forced = JSON.parse(localmim(['doctor', '--json', '--backend', 'webgpu'], env).stdout) as { chosen: string; adapter: object };
    expect(forced).toMatchObject({ chosen: 'webgpu', adapter: { architecture: 'swiftshader', software: true } });
  });

  test('the HOG and pixel targets equal the official ones', async () => {
    expect(await useBackend('webgpu')).toBeUndefined();
    for (const image of golden.images) {
      for (const c of image.hog) await expectHogMatches(image, c);
      for (const px of image.pixel) await expectPixelsMatch(image, px);
    }
  }, 120_000);

  test('the forward pass equals the official code', async () => {
    expect(await useBackend('webgpu')).toBeUndefined();
    await expectForwardMatchesOfficial();
  });

  test('every gradient of a LocalMIM step equals the wasm reference (relative L2 ≤ 1e-4)', async () => {
    expect(await useBackend('webgpu')).toBeUndefined();
    const gpu = await stepGradients();
    expect(await useBackend('wasm')).toBeUndefined();
    const ref = await stepGradients();
    expect(gpu.grads.size).toBe(ref.grads.size);
    for (const [name, g] of ref.grads) {
      const diff = l2(g.map((x, i) => x - gpu.grads.get(name)![i]!));
      expect(diff / Math.max(l2(g), 1e-12), name).toBeLessThanOrEqual(1e-4);
    }
    gpu.losses.forEach((l, k) => expect(Math.abs(l / ref.losses[k]! - 1)).toBeLessThan(1e-5));
  });

  test('50 steps leave numTensors and GPU bytes flat', async () => {
    expect(await useBackend('webgpu')).toBeUndefined();
    const cfg = parseRunConfig({
      model: { D: 16, depth: 2, heads: 2, decoderDim: 8, decoderHeads: 2, imgSize: 16, patchSize: 4 },
      optim: { batch: 2 },
    });
    const model = new LocalMIM(cfg.model, 0);
    const trainer = new TrainStep(model, cfg.optim);
    const images = syntheticImages(2, 16, 3);
    const rng = new Rng(1);
    const seen: { numTensors: number; numBytesInGPU: number }[] = [];
    for (let step = 0; step < 50; step++) {
      const batch = model.prepare(images, rng.fill(2 * model.dims.L));
      const losses = trainer.run([batch], 1e-3);
      await losses.data();
      tf.dispose(losses);
      disposeBatch(batch);
      const m = tf.memory() as tf.MemoryInfo & { numBytesInGPU: number };
      seen.push({ numTensors: m.numTensors, numBytesInGPU: m.numBytesInGPU });
    }
    expect(seen[49]).toEqual(seen[2]);
    trainer.dispose();
    model.dispose();
  }, 300_000);

  test("a run whose attention map exceeds the adapter's storage binding is refused before it starts", async () => {
    expect(await useBackend('webgpu')).toBeUndefined();
    const store = new Store(join(dir, 'limits.db'));
    const { datasetId } = await indexFolder(store, SAMPLE_IMAGES);
    const config = parseRunConfig({ model: { ...tiny, imgSize: 768 }, optim: { batch: 8 } });
    expect(() => prepare(store, join(dir, 'limits'), { new: 'pretrain', datasetId, config }, 'webgpu')).toThrow(
      /one attention map of this run takes about \d+ MB, more than this GPU binds at once \(1073 MB\)/,
    );
    expect(store.runs()).toEqual([]);
    store.close();
  });

  test('pretrain --backend webgpu: its start names the adapter; 5 steps equal wasm within 1e-3; wasm resumes it exactly', () => {
    const config = join(dir, 'tiny.json');
    writeFileSync(config, JSON.stringify({ model: tiny, optim: { epochs: 1, batch: 8, warmupEpochs: 0.3, blr: 2e-3 }, seed: 0 }));
    const run = (home: string, args: string[]) => {
      const r = localmim(['pretrain', '--home', join(dir, home), '--json', ...args], env);
      expect(r.code, r.stderr).toBe(0);
      return r.stdout
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { type: string; loss?: number; backendReport?: { adapter?: object } });
    };
    const losses = (events: { type: string; loss?: number }[]) => events.filter((e) => e.type === 'step').map((e) => e.loss!);
    const gpu = run('gpu', ['--backend', 'webgpu', '--config', config, '--max-steps', '5']);
    expect(gpu[0]).toMatchObject({ type: 'start', backend: 'webgpu', backendReport: { adapter: { architecture: 'swiftshader' } } });
    const cpu = losses(run('cpu', ['--backend', 'wasm', '--config', config, '--max-steps', '7']));
    expect(losses(gpu)).toHaveLength(5);
    losses(gpu).forEach((l, i) => expect(Math.abs(l / cpu[i]! - 1), `step ${i + 1}`).toBeLessThan(1e-3));
    // A checkpoint does not depend on the backend: the GPU run goes on on the CPU.
    const resumed = losses(run('gpu', ['--backend', 'wasm', '--resume', '1', '--max-steps', '7']));
    resumed.forEach((l, i) => expect(Math.abs(l / cpu[5 + i]! - 1), `step ${6 + i}`).toBeLessThan(1e-3));
    expect(resumed).toHaveLength(2);
  });
});

test('tensorflow-gpu is not offered where the CUDA 11 libraries it needs are missing (TensorFlow would run on the CPU)', () => {
  expect(missingCudaLibraries('', '')).toEqual(['libcudart.so.11.0', 'libcublas.so.11', 'libcudnn.so.8']);
  const cache = ['libcudart.so.11.0', 'libcublas.so.11'].map((l) => `\t${l} (libc6,x86-64) => /usr/local/cuda/lib64/${l}`).join('\n');
  expect(missingCudaLibraries(cache, '')).toEqual(['libcudnn.so.8']);
  writeFileSync(join(dir, 'libcudnn.so.8'), '');
  expect(missingCudaLibraries(cache, `/nowhere:${dir}`)).toEqual([]);
});
