import * as tf from '@tensorflow/tfjs';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, expect, test, vi } from 'vitest';
import type { ApiEvent } from '../core/api.js';
import { FinetuneRunSchema } from '../core/finetune-config.js';
import { finetuneAugment } from '../core/data/augment.js';
import { DecodeCache } from '../core/data/cache.js';
import { Loader } from '../core/data/loader.js';
import { torchFinetuneSpec } from '../core/engine.js';
import { homePaths, SAMPLE_IMAGES } from '../core/home.js';
import { classifierFor } from '../core/model/classifier.js';
import { evalImage } from '../core/data/preprocess.js';
import { Rng } from '../core/random.js';
import { cropKernel } from '../core/recipe.js';
import { launchNodeJob } from '../core/jobs/launch.js';
import { prepare } from '../core/runs/lifecycle.js';
import { paramGroups } from '../core/runs/torch.js';
import { decodeSafetensors, encodeSafetensors, type NamedTensor } from '../core/safetensors.js';
import { TRAIN_PY } from '../core/scale-out/folder.js';
import { finetuneTask } from '../core/train/finetune.js';
import { lrAt } from '../core/train/schedule.js';
import { Service } from '../core/service/service.js';
import { Store } from '../core/store/store.js';
import { localmimAsync } from './support/cli.js';
import { labeledSamples } from './support/images.js';
import { describeWith, PYTHON } from './support/requirements.js';

// ViT and Swin fine-tuning on the torch engine equal the app’s: the same weights and the same augmented batches handed over
// (RandAugment, crops and random erasing are the app's, as test/scale-out.test.ts hands pretraining its pixels); Mixup,
// CutMix, label smoothing and stochastic depth drawn by each engine from the same seeds; layer decay as handed over.
const dir = mkdtempSync(join(tmpdir(), 'localmim-torch-ft-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const STEPS = fileURLToPath(new URL('./scale/finetune_steps.py', import.meta.url));
const AUGMENT = fileURLToPath(new URL('./scale/augment_samples.py', import.meta.url));

const files = readdirSync(SAMPLE_IMAGES)
  .filter((f) => f.endsWith('.jpg'))
  .sort();
const classes = [...new Set(files.map((f) => f.replace(/-\d+\.jpg$/, '')))];
const items = files.map((f) => ({ abs: join(SAMPLE_IMAGES, f), hash: f, label: classes.indexOf(f.replace(/-\d+\.jpg$/, '')) }));

describeWith('torch', 'pillow')('fine-tuning on the torch engine', () => {
  test("the recipe's augmentation makes the app's choices: RandAugment's ops and magnitudes, random erasing's box", async () => {
    const f = FinetuneRunSchema.parse({ model: { imgSize: 32 }, finetune: { reprob: 0.5 }, classes, from: null }).finetune;
    const image = await evalImage(items[0]!.abs, 32);
    const seeds = Array.from({ length: 40 }, (_, i) => i);
    const tensors = new Map([['image', { shape: [32, 32, 3], values: Float32Array.from(image.data) }]]);
    writeFileSync(join(dir, 'aug-in.safetensors'), encodeSafetensors(tensors, { seeds: JSON.stringify(seeds) }));
    const run = FinetuneRunSchema.parse({ model: { imgSize: 32 }, finetune: f, classes, from: null });
    writeFileSync(join(dir, 'aug-spec.json'), JSON.stringify(torchFinetuneSpec(run, {})));
    const r = spawnSync(
      PYTHON,
      [AUGMENT, TRAIN_PY, join(dir, 'aug-spec.json'), join(dir, 'aug-in.safetensors'), join(dir, 'aug-out.safetensors')],
      {
        encoding: 'utf8',
        env: { ...process.env, OMP_NUM_THREADS: '1', PYTHONDONTWRITEBYTECODE: '1' },
      },
    );
    expect(r.status, r.stderr).toBe(0);
    const out = decodeSafetensors(readFileSync(join(dir, 'aug-out.safetensors'))).tensors;
    const transform = finetuneAugment(f)!;
    let erased = 0;
    for (const seed of seeds) {
      const rng = new Rng(seed);
      const ours = transform(image, rng).data;
      const theirs = out.get(`sample.${seed}`)!.values; // [3, H, W]
      // The same erased box (the bounding box of the noise, non-integer in both) and, outside it, the same pixels
      // (RandAugment is Pillow's op for op).
      const noise = (v: (i: number, c: number) => number) => {
        const at = [...Array(32 * 32).keys()].filter((i) => [0, 1, 2].some((c) => v(i, c) !== Math.round(v(i, c))));
        const [xs, ys] = [at.map((i) => i % 32), at.map((i) => Math.floor(i / 32))];
        return at.length ? [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)] : [];
      };
      const box = noise((i, c) => ours[i * 3 + c]!);
      expect(
        noise((i, c) => theirs[c * 32 * 32 + i]!),
        `seed ${seed}`,
      ).toEqual(box);
      const inBox = (i: number) => box.length > 0 && i % 32 >= box[0]! && i % 32 <= box[2]! && i >> 5 >= box[1]! && i >> 5 <= box[3]!;
      let differ = 0;
      for (let i = 0; i < 32 * 32; i++) for (let c = 0; c < 3; c++) if (!inBox(i) && ours[i * 3 + c] !== theirs[c * 32 * 32 + i]) differ++;
      expect(differ, `seed ${seed}`).toBe(0);
      // Unerased, both generators made the same number of draws (the erasing noise is each engine's own).
      if (box.length) erased++;
      else expect(out.get('after')!.values[seed], `seed ${seed}`).toBeCloseTo(rng.next(), 6);
    }
    expect(erased).toBeGreaterThan(5);
  }, 60_000);

  const vit = { D: 32, depth: 4, heads: 2, imgSize: 32, patchSize: 8 };
  const full = { blr: 5e-3, dropPath: 0.2, layerDecay: 0.75, mixup: 0.8, cutmix: 1 };
  // Swin: two stages of windows 4 on an 8 × 8 token grid, the first shifted, its 64 tokens packed into groups of windows.
  const swin = { size: 'swin-tiny', D: 32, depths: [2, 2], stageHeads: [1, 2], windowSize: 4, imgSize: 32, patchSize: 4 };
  test.each([
    ['ViT steps (layer decay, drop path, Mixup/CutMix, label smoothing)', vit, full],
    ['Swin steps (the same)', swin, full],
    ["steps of MAE's LARS probe (BatchNorm, LARS on the head)", vit, { linearProbe: true, probeRecipe: 'lars', blr: 20 }],
  ])(
    'five %s equal tfjs within 1e-3 of the loss',
    async (_, model, recipe) => {
      const config = FinetuneRunSchema.parse({
        model,
        finetune: { batch: 8, epochs: 1, warmupEpochs: 0, ...recipe },
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
      const trained = new Map([...task.model.params.entries()].map(([n, t]) => [n, t.dataSync() as Float32Array]));
      const spec = join(dir, 'spec.json');
      const classifier = classifierFor(config.model, { classes: classes.length, probe: f.linearProbe, scratch: true }, config.seed); // the task's, for its groups
      writeFileSync(spec, JSON.stringify(torchFinetuneSpec(config, paramGroups(classifier, f.layerDecay))));
      classifier.dispose();
      writeFileSync(join(dir, 'in.safetensors'), encodeSafetensors(handed, { lrs: JSON.stringify(lrs) }));
      task.dispose();

      const r = spawnSync(PYTHON, [STEPS, TRAIN_PY, spec, join(dir, 'in.safetensors'), join(dir, 'out.safetensors')], {
        encoding: 'utf8',
        env: { ...process.env, OMP_NUM_THREADS: '1', PYTHONDONTWRITEBYTECODE: '1' },
      });
      expect(r.status, r.stderr).toBe(0);
      const theirs = decodeSafetensors(readFileSync(join(dir, 'out.safetensors'))).tensors.get('losses')!.values;
      const gaps = ours.map((l, s) => Math.abs(theirs[s]! - l) / l);
      console.log(
        `losses tfjs ${ours.map((l) => l.toFixed(4))}, torch ${[...theirs].map((l) => l.toFixed(4))}; largest gap ${Math.max(...gaps).toExponential(1)}`,
      );
      gaps.forEach((gap, s) => expect(gap, `step ${s + 1}`).toBeLessThan(1e-3));
      // The steps trained, and alike: each tensor's change over them is tfjs's within 1 % of its size (a LARS step
      // moves the loss too little for the losses alone to tell).
      const out = decodeSafetensors(readFileSync(join(dir, 'out.safetensors'))).tensors;
      let largest = 0;
      for (const [name, after] of trained) {
        const [before, torch] = [handed.get(name)!.values, out.get(`final.${name}`)!.values];
        const moved = Math.max(...after.map((v, i) => Math.abs(v - before[i]!)));
        if (moved === 0) continue;
        largest = Math.max(largest, moved);
        expect(Math.max(...after.map((v, i) => Math.abs(v - torch[i]!))) / moved, name).toBeLessThan(1e-2);
      }
      expect(largest).toBeGreaterThan(0);
    },
    120_000,
  );
});

// A whole fine-tune through the CLI on the torch engine, and pause/resume across engines. The resumed runs are handed
// the app's augmented batches (LOCALMIM_TORCH_BATCHES: the split's training loader, as the tfjs run builds it), since
// PIL and sharp resample differently; everything else (initial classifier, LP-FT head, Mixup, drop path, schedule,
// evaluation) is each engine's own.
const BIN = fileURLToPath(new URL('../bin/localmim.js', import.meta.url));
const tinyRun = { model: { D: 32, depth: 4, heads: 2, decoderDim: 32, decoderHeads: 2, imgSize: 32, patchSize: 8 }, seed: 7 };
type Event = { type: string; step: number; loss: number; runId: number; engine?: string; status?: string; top1?: number };
const events = (stdout: string) =>
  stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Event);
const stepsOf = (stdout: string) => events(stdout).filter((e) => e.type === 'step');

describeWith('torch', 'pillow')('a fine-tuning job on the torch engine', () => {
  const home = join(dir, 'home');
  const labeled = labeledSamples(join(dir, 'labeled'), 8);
  const batches = join(dir, 'ft-batches.safetensors');
  const env = { OMP_NUM_THREADS: '1', LOCALMIM_PYTHON: PYTHON };
  const finetune = (args: string[], extra = {}) =>
    localmimAsync(['finetune', '--json', '--home', home, ...args], { ...env, ...extra }).then((r) => {
      expect(r.code, r.stderr).toBe(0);
      return r.stdout;
    });
  let reference: Event[] = [];

  beforeAll(async () => {
    writeFileSync(join(dir, 'tiny.json'), JSON.stringify({ ...tinyRun, optim: { batch: 8, epochs: 1, warmupEpochs: 0, lr: 3e-3 } }));
    const r = await localmimAsync(['pretrain', '--json', '--home', home, '--config', join(dir, 'tiny.json'), '--max-steps', '2'], env);
    expect(r.code, r.stderr).toBe(0);
    // The uninterrupted reference on tfjs (run 2), then its training batches as its loader makes them, handed over.
    reference = stepsOf(await finetune(['--from', '1', '--data', labeled, '--batch', '8', '--no-baselines', '--max-steps', '6']));
    const store = new Store(homePaths(home).db);
    const { job, spec } = prepare(store, home, { resume: 2, restart: false, overrides: {} }, 'wasm');
    store.close();
    if (spec.kind !== 'finetune' || !('train' in job.data)) throw new Error('not a fine-tune');
    const f = spec.config.finetune;
    const split = job.data.train;
    const loader = new Loader(split, new DecodeCache(homePaths(home).cache), 32, f.batch, spec.config.seed, {
      minScale: f.minScale,
      kernel: cropKernel(f, spec.config.model),
      transform: finetuneAugment(f),
    });
    const handed = new Map<string, NamedTensor>();
    for (let s = 0; s < 6; s++) {
      const [epoch, i] = [Math.floor(s / loader.batchesPerEpoch), s % loader.batchesPerEpoch];
      const { images, items: picked } = await loader.batchAt(epoch, i);
      const values = new Float32Array(f.batch * 32 * 32 * 3);
      images.forEach((img, b) => values.set(img.data, b * 32 * 32 * 3));
      handed.set(`batch.${epoch}.${i}`, { shape: [f.batch, 32, 32, 3], values });
      handed.set(`labels.${epoch}.${i}`, { shape: [f.batch], values: Float32Array.from(picked, (k) => split[k]!.label) });
    }
    writeFileSync(batches, encodeSafetensors(handed, {}));
  }, 180_000);

  function expectSameLosses(ours: Event[]) {
    const gaps = ours.map((s) => Math.abs(s.loss - reference.find((r) => r.step === s.step)!.loss) / s.loss);
    console.log(`largest relative loss gap to the uninterrupted tfjs fine-tune: ${Math.max(...gaps).toExponential(1)}`);
    gaps.forEach((gap, i) => expect(gap, `step ${ours[i]!.step}`).toBeLessThan(1e-3));
  }

  test('the contract: finetune --engine torch --epochs 1 --json trains, evaluates, checkpoints its top-1 and ends with its result', async () => {
    const out = events(await finetune(['--from', '1', '--data', labeled, '--batch', '8', '--engine', 'torch', '--epochs', '1']));
    expect(out[0]).toMatchObject({ type: 'start', engine: 'torch', step: 0 });
    const steps = out.filter((e) => e.type === 'step').map((e) => e.step);
    expect(steps).toEqual(Array.from({ length: steps.length }, (_, i) => i + 1));
    // LP-FT: the probe's head scored and checkpointed at step 0, then each epoch's end.
    const evals = out.filter((e) => e.type === 'eval');
    expect(evals.map((e) => e.step)).toEqual([0, steps.length]);
    const checkpoints = out.filter((e) => e.type === 'checkpoint');
    expect(checkpoints.at(-1)).toMatchObject({ step: steps.length });
    expect(out.at(-2)).toMatchObject({ type: 'end', status: 'finished', step: steps.length });
    const result = out.at(-1) as Event & { probeTop1: number; baselines: { pixels: number; init: number } };
    expect(result).toMatchObject({ type: 'finetune', top1: Math.max(...evals.map((e) => e.top1!)), probeTop1: evals[0]!.top1 });
    expect(result.baselines.init).toBeGreaterThan(0);
    // The checkpoints carry their top-1 (export picks the best).
    const store = new Store(homePaths(home).db);
    const runId = store.runs().at(-1)!.id;
    expect(store.checkpoints(runId).map((c) => c.valTop1)).toEqual(evals.map((e) => e.top1));
    store.close();
  }, 180_000);

  test('paused on torch (Ctrl-C), resumed on tfjs: the losses of the uninterrupted run', async () => {
    const args = ['--from', '1', '--data', labeled, '--batch', '8', '--no-baselines', '--max-steps', '6'];
    const out = await interrupted([...args, '--engine', 'torch'], { ...env, LOCALMIM_TORCH_BATCHES: batches });
    const paused = events(out).at(-1)!;
    expect(paused).toMatchObject({ type: 'end', status: 'paused' });
    expect(paused.step).toBeLessThan(6);
    const id = String(events(out)[0]!.runId);
    const rest = stepsOf(await finetune(['--resume', id, '--engine', 'tfjs', '--max-steps', '6']));
    expect(rest.map((s) => s.step)).toEqual(Array.from({ length: 6 - paused.step }, (_, i) => paused.step + 1 + i));
    expectSameLosses([...stepsOf(out), ...rest]);
  }, 180_000);

  test('paused on tfjs, resumed on torch: the same', async () => {
    const args = ['--from', '1', '--data', labeled, '--batch', '8', '--no-baselines'];
    const first = events(await finetune([...args, '--max-steps', '3']));
    const id = String(first[0]!.runId);
    const rest = stepsOf(await finetune(['--resume', id, '--engine', 'torch', '--max-steps', '6'], { LOCALMIM_TORCH_BATCHES: batches }));
    expect(rest.map((s) => s.step)).toEqual([4, 5, 6]);
    expectSameLosses([...first.filter((e) => e.type === 'step'), ...rest]);
  }, 180_000);

  /** A fine-tune interrupted with Ctrl-C once its second step is reported: it checkpoints and ends paused. */
  function interrupted(args: string[], extra: object): Promise<string> {
    return new Promise((resolve) => {
      const child = spawn(process.execPath, [BIN, 'finetune', '--json', '--home', home, ...args], {
        env: { ...process.env, ...extra },
      });
      let out = '';
      let sent = false;
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (!sent && stepsOf(out).length >= 2) sent = child.kill('SIGINT');
      });
      child.on('close', () => resolve(out));
    });
  }
});

describeWith('torch', 'pillow')('fine-tuning on the torch engine in the app’s service', () => {
  test('finetune.create with engine torch: its evaluations and checkpoints reach the app', async () => {
    process.env.LOCALMIM_PYTHON = PYTHON;
    const service = new Service(join(dir, 'service'), () => launchNodeJob(), { cadence: {} });
    const seen: ApiEvent[] = [];
    service.subscribe((e) => seen.push(e));
    const until = (pred: (e: ApiEvent) => boolean) =>
      vi.waitFor(() => expect(seen.find(pred)).toBeTruthy(), { timeout: 120_000, interval: 100 });
    try {
      await service.call('datasets.add', { path: labeledSamples(join(dir, 'service-labeled'), 4) });
      await until((e) => e.type === 'dataset.indexed');
      const { datasetId } = seen.find((e) => e.type === 'dataset.indexed') as { datasetId: number };
      const model = { D: 32, depth: 2, heads: 2, imgSize: 32, patchSize: 8 };
      const finetune = { recipe: 'official', epochs: 1, batch: 8, baselines: false };
      const { runId } = (await service.call('finetune.create', { from: null, datasetId, model, finetune, engine: 'torch' })) as {
        runId: number;
      };
      await until((e) => e.type === 'run.status' && e.runId === runId && (e.status === 'finished' || e.status === 'failed'));
      const run = service.store.run(runId)!;
      expect(run, run.error ?? '').toMatchObject({ backend: 'torch cpu', status: 'finished' });
      const evals = seen.filter((e): e is Extract<ApiEvent, { type: 'run.eval' }> => e.type === 'run.eval' && e.runId === runId);
      expect(evals.map((e) => e.step)).toEqual([run.step]);
      expect(service.store.checkpoints(runId).at(-1)).toMatchObject({ step: run.step, valTop1: evals[0]!.top1 });
    } finally {
      await service.shutdown();
      delete process.env.LOCALMIM_PYTHON;
    }
  }, 180_000);
});
