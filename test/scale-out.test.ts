import * as tf from '@tensorflow/tfjs';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { afterAll, expect, test } from 'vitest';
import { parseRunConfig, type RunConfigInput } from '../core/config.js';
import { randomCrop } from '../core/data/augment.js';
import { DecodeCache } from '../core/data/cache.js';
import { torchSpec } from '../core/engine.js';
import { Loader, sampleRng } from '../core/data/loader.js';
import { evalImage } from '../core/data/preprocess.js';
import { SAMPLE_IMAGES } from '../core/home.js';
import { disposeBatch, LocalMIM } from '../core/model/localmim.js';
import { Rng } from '../core/random.js';
import { decodeSafetensors, encodeSafetensors, type NamedTensor } from '../core/safetensors.js';
import { TRAIN_PY } from '../core/scale-out/folder.js';
import { launchNodeJob } from '../core/jobs/launch.js';
import { Service } from '../core/service/service.js';
import { Store } from '../core/store/store.js';
import { TrainStep } from '../core/train/step.js';
import { localmim } from './support/cli.js';
import { describeWith, PYTHON } from './support/requirements.js';

// The job's trainer runs on Debian's torch and Pillow (test/support/requirements.ts: skipped without them, failing under CI=true).
const withTorch = describeWith('torch', 'pillow');

const dir = mkdtempSync(join(tmpdir(), 'localmim-scale-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const ONE_STEP = fileURLToPath(new URL('./scale/one_step.py', import.meta.url));

// Tiny models: 32 px, patch 8 (a 4×4 grid); one environment thread each, so that two processes share 2 cores.
const tiny = { D: 32, depth: 4, heads: 2, decoderDim: 32, decoderHeads: 2, imgSize: 32, patchSize: 8 };
const pyEnv = { ...process.env, OMP_NUM_THREADS: '1', PYTHONDONTWRITEBYTECODE: '1' };

function python(args: string[], env: NodeJS.ProcessEnv = {}) {
  const r = spawnSync(PYTHON, args, { encoding: 'utf8', env: { ...pyEnv, ...env }, maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`python3 ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

/** ‖a − b‖ / ‖b‖. */
function relative(a: Float32Array, b: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i]! - b[i]!) ** 2;
    den += b[i]! ** 2;
  }
  return Math.sqrt(num) / Math.max(Math.sqrt(den), 1e-30);
}

const sampleItems = () =>
  readdirSync(SAMPLE_IMAGES)
    .filter((f) => f.endsWith('.jpg'))
    .sort()
    .map((f) => ({ abs: join(SAMPLE_IMAGES, f), hash: f }));

withTorch('train.py: one optimizer step equals the app’s', () => {
  const configs: [string, RunConfigInput][] = [
    ['HOG, four scales ×4 ×2 ×1 ×0.5', { model: { ...tiny, taps: [0, 1, 2, 3], scales: [4, 2, 1, 0.5] } }],
    ['normalized pixels, isolated', { model: { ...tiny, target: 'pixel', variant: 'isolated' } }],
    ['HOG with bias and 18 bins, global', { model: { ...tiny, hogBias: true, nbins: 18, variant: 'global', scales: [2, 1] } }],
  ];
  test.each(configs)('%s: per-scale losses, weights and moments within 1e-4', async (name, input) => {
    const config = parseRunConfig({ ...input, optim: { batch: 4, weightDecay: 0.05 }, seed: 3 });
    const model = new LocalMIM(config.model, config.seed);
    const trainer = new TrainStep(model, config.optim);
    const loader = new Loader(sampleItems(), new DecodeCache(join(dir, 'cache')), 32, 4, config.seed);
    const images = await loader.get(0, 0);
    const noise = new Rng(11).fill(4 * model.dims.L);
    const lr = 1e-3;
    // The handed-over file: the state dict before the step, the batch's pixels (0–255) and the mask's noise.
    const handed = new Map<string, NamedTensor>();
    for (const [n, t] of model.params.entries()) handed.set(n, { shape: t.shape, values: t.dataSync() as Float32Array });
    const pixels = new Float32Array(4 * 32 * 32 * 3);
    images.forEach((img, b) => pixels.set(img.data, b * 32 * 32 * 3));
    handed.set('batch.images', { shape: [4, 32, 32, 3], values: pixels });
    handed.set('batch.noise', { shape: [4, model.dims.L], values: noise });
    const stem = join(dir, name.replace(/\W+/g, '-'));
    writeFileSync(`${stem}-in.safetensors`, encodeSafetensors(handed, { lr: String(lr) }));
    writeFileSync(`${stem}-config.json`, JSON.stringify(torchSpec(config)));

    const batch = model.prepare(images, noise);
    const out = trainer.run([batch], lr);
    const ours = (await out.data()) as Float32Array;
    tf.dispose(out);
    disposeBatch(batch);

    python([ONE_STEP, TRAIN_PY, `${stem}-config.json`, `${stem}-in.safetensors`, `${stem}-out.safetensors`]);
    const theirs = decodeSafetensors(readFileSync(`${stem}-out.safetensors`)).tensors;
    const losses = theirs.get('losses')!.values;
    expect(losses.length).toBe(model.dims.scales.length);
    losses.forEach((l, k) => expect(Math.abs(l - ours[k + 1]!) / ours[k + 1]!, `scale ${k}`).toBeLessThan(1e-4));
    // The key bias has an exactly zero gradient (softmax is blind to a shift shared by a row's scores), so both sides
    // see round-off there, which Adam scales up to ±lr: its third of qkv.bias is compared as "no gradient" instead.
    const compare = (name: string, t: tf.Tensor) => {
      let [a, b] = [theirs.get(name)!.values, t.dataSync() as Float32Array];
      if (name.endsWith('attn.qkv.bias')) {
        const W = a.length / 3;
        const keys = (x: Float32Array) => x.subarray(W, 2 * W);
        if (name.startsWith('optimizer.exp_avg.'))
          for (const x of [a, b]) expect(Math.max(...keys(x).map(Math.abs)), name).toBeLessThan(1e-7);
        const qv = (x: Float32Array) => Float32Array.of(...x.subarray(0, W), ...x.subarray(2 * W));
        [a, b] = [qv(a), qv(b)];
      }
      worst = Math.max(worst, relative(a, b));
      expect(relative(a, b), name).toBeLessThan(1e-4);
    };
    let worst = 0;
    for (const [n, t] of model.params.vars) compare(n, t);
    for (const [n, t] of trainer.optimizer.m) compare(`optimizer.exp_avg.${n}`, t);
    for (const [n, t] of trainer.optimizer.v) compare(`optimizer.exp_avg_sq.${n}`, t);
    const lossGap = Math.max(...losses.map((l, k) => Math.abs(l - ours[k + 1]!) / ours[k + 1]!));
    console.log(`${name}: largest relative gap ${lossGap.toExponential(1)} (losses), ${worst.toExponential(1)} (tensors)`);
    // The step moved the weights: equal "after" weights are not equal "before" ones.
    const moved = relative(theirs.get('blocks.0.attn.qkv.weight')!.values, handed.get('blocks.0.attn.qkv.weight')!.values);
    expect(moved).toBeGreaterThan(1e-4);
    trainer.dispose();
    model.dispose();
  });
});

withTorch('train.py: data order and crops are the app’s functions of (seed, epoch, index)', () => {
  test('the same images, boxes and flips; pixels as close as PIL and sharp resample', async () => {
    const items = sampleItems();
    const seed = 5;
    const loader = new Loader(items, new DecodeCache(join(dir, 'cache')), 32, 8, seed);
    const at: [number, number][] = [
      [0, 0],
      [0, 3],
      [2, 1],
    ];
    const script = `
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location('train', sys.argv[1]); train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train)
items = [{'path': p} for p in json.loads(sys.argv[3])]
data = train.MicroBatches(sys.argv[2], items, 32, 8, ${seed})
out = []
for epoch, i in ${JSON.stringify(at)}:
    order = data.order(epoch)
    for j in range(8):
        k = i * 8 + j
        im = train.read_rgb(sys.argv[2] + '/' + items[order[k]]['path'])
        out.append([order[k], *train.random_crop(train.Rng(train.seed_for(${seed}, train.STREAMS['crop'], epoch, k)), im.width, im.height)])
    data.keys = [(epoch, i)]
    out.append(data[0].permute(0, 2, 3, 1).flatten().tolist())
print(json.dumps(out))`;
    const names = items.map((it) => it.hash);
    const theirs = JSON.parse(python(['-c', script, TRAIN_PY, SAMPLE_IMAGES, JSON.stringify(names)])) as unknown[][];
    let diff = 0;
    let n = 0;
    for (const [a, [epoch, i]] of at.entries()) {
      const rows = theirs.slice(a * 9, a * 9 + 8);
      const indices = loader.itemsAt(epoch, i);
      const boxes = indices.map((index, j) => {
        const c = randomCrop(sampleRng(seed, epoch, i * 8 + j), 96, 96);
        return [index, c.left, c.top, c.width, c.height, c.flip];
      });
      expect(rows).toEqual(boxes);
      const pixels = theirs[a * 9 + 8] as number[];
      const ours = await loader.get(epoch, i);
      ours.forEach((img, b) => img.data.forEach((v, q) => ((diff += Math.abs(v - pixels[b * 32 * 32 * 3 + q]!)), n++)));
    }
    // Not bit-equal: sharp crops a cached 88 px copy and resamples with its own cubic; PIL resamples the original.
    console.log(`mean |PIL − sharp| over the crops: ${(diff / n).toFixed(2)} of 255`);
    expect(diff / n).toBeLessThan(8);
  });
});

/** A job process; resolves with its stdout once it exits, or kills it (SIGKILL) when `killWhen` matches its output. */
function launch(job: string, args: string[], env: NodeJS.ProcessEnv, killWhen?: RegExp): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(PYTHON, [join(job, 'train.py'), '--workers', '0', '--print-every', '1', ...args], {
      env: { ...pyEnv, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    const take = (d: Buffer) => {
      out += d.toString();
      if (killWhen?.test(out)) child.kill('SIGKILL');
    };
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    child.on('close', (code) => resolve({ code, out }));
  });
}

const port = () => String(20000 + Math.floor(Math.random() * 20000));
const rank = (r: number, world: number, p: string) => ({
  RANK: String(r),
  WORLD_SIZE: String(world),
  MASTER_ADDR: '127.0.0.1',
  MASTER_PORT: p,
});
const metrics = (job: string) =>
  readFileSync(join(job, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { step: number; loss: number; losses: number[] });

withTorch('localmim scale-out → torch → scale-in', () => {
  const home = join(dir, 'home');
  const configFile = join(dir, 'tiny.json');
  writeFileSync(
    configFile,
    JSON.stringify({ model: tiny, optim: { batch: 8, epochs: 1, warmupEpochs: 0, lr: 3e-3, weightDecay: 0.05 }, seed: 7 }),
  );
  const scaleOut = (out: string, from: string[]) =>
    localmim(['scale-out', ...from, '--data', SAMPLE_IMAGES, '--out', out, '--home', home, '--json']);

  test('bad input: one line naming what is wrong, nothing written', () => {
    const r = localmim(['scale-out', '--config', configFile, '--out', join(dir, 'nodata'), '--home', home]);
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toBe('localmim scale-out: --data DIR is required: the images the job trains on');
    const bad = join(dir, 'bad.json');
    writeFileSync(bad, JSON.stringify({ model: { ...tiny, imgSize: 30 } }));
    const r2 = scaleOut(join(dir, 'badjob'), ['--config', bad]);
    expect(r2.code).toBe(1);
    expect(r2.stderr).toMatch(/model\.imgSize: imgSize=30 must be a multiple of patchSize=8/);
    expect(existsSync(join(dir, 'badjob'))).toBe(false);
    expect(localmim(['scale-in', join(dir, 'nowhere'), '--home', home]).stderr).toMatch(/job\.json: cannot read/);
  });

  test('one process reproduces the app’s run; killed, it resumes from its last checkpoint', async () => {
    const app = localmim(['pretrain', '--json', '--home', home, '--config', configFile, '--data', SAMPLE_IMAGES, '--max-steps', '3']);
    expect(app.code, app.stderr).toBe(0);
    const appSteps = app.stdout
      .split('\n')
      .filter((l) => l.includes('"type":"step"'))
      .map((l) => JSON.parse(l) as { loss: number });

    const whole = join(dir, 'whole');
    expect(scaleOut(whole, ['--config', configFile]).code).toBe(0);
    for (const f of ['train.py', 'config.json', 'manifest.jsonl', 'init.safetensors', 'job.json', 'README.md'])
      expect(existsSync(join(whole, f)), f).toBe(true);
    expect(readFileSync(join(whole, 'manifest.jsonl'), 'utf8').split('\n')[0]).toMatch(
      /^\{"path":"astronaut-00.jpg","sha256":"[0-9a-f]{64}","label":null\}$/,
    );
    const r = await launch(whole, ['--max-steps', '8'], rank(0, 1, port()));
    expect(r.code, r.out).toBe(0);
    const reference = metrics(whole);
    expect(reference.map((m) => m.step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    // Same initial weights, order, boxes and masks; the crops' pixels differ slightly (PIL vs sharp).
    appSteps.forEach((s, i) => expect(Math.abs(reference[i]!.loss - s.loss) / s.loss, `step ${i + 1}`).toBeLessThan(1e-2));

    const killed = join(dir, 'killed');
    expect(scaleOut(killed, ['--config', configFile]).code).toBe(0);
    const first = await launch(killed, ['--max-steps', '8', '--every-steps', '2'], rank(0, 1, port()), /step 5\//);
    expect(first.code).toBeNull(); // killed
    const resumed = await launch(killed, ['--max-steps', '8', '--every-steps', '2'], rank(0, 1, port()));
    expect(resumed.code, resumed.out).toBe(0);
    expect(resumed.out).toMatch(/starting at step 4 from checkpoints\/ckpt-0000004\.safetensors/);
    const again = metrics(killed);
    expect(again.map((m) => m.step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    again.forEach((m, i) => expect(Math.abs(m.loss - reference[i]!.loss) / reference[i]!.loss, `step ${m.step}`).toBeLessThan(1e-5));
  });

  test('2-process DDP (gloo, env://): the loss falls, scale-in imports it, features equal train.py’s', async () => {
    const job = join(dir, 'ddp');
    expect(scaleOut(job, ['--config', configFile]).code).toBe(0);
    const p = port();
    const t0 = performance.now();
    const [r0, r1] = await Promise.all([0, 1].map((r) => launch(job, ['--max-steps', '12', '--every-steps', '6'], rank(r, 2, p))));
    console.log(`2-process DDP: 12 steps of 16 images in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    expect(r0!.code, r0!.out).toBe(0);
    expect(r1!.code, r1!.out).toBe(0);
    const m = metrics(job);
    expect(m.map((x) => x.step)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
    const mean = (xs: { loss: number }[]) => xs.reduce((a, x) => a + x.loss, 0) / xs.length;
    expect(mean(m.slice(-3))).toBeLessThan(mean(m.slice(0, 3)));

    const r = localmim(['scale-in', job, '--home', home, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const back = JSON.parse(r.stdout) as { runId: number; step: number; created: boolean };
    expect(back).toMatchObject({ step: 12, created: true, checkpoints: 2, metrics: 12 });
    const store = new Store(join(home, 'localmim.db'));
    expect(store.metrics(back.runId).map((x) => x.loss)).toEqual(m.map((x) => x.loss));
    expect(store.checkpoints(back.runId).map((c) => c.step)).toEqual([6, 12]);
    expect(store.run(back.runId)).toMatchObject({ status: 'paused', step: 12, backend: 'torch' });
    store.close();
    // Again: the same run, not a second one.
    expect(JSON.parse(localmim(['scale-in', job, '--home', home, '--json']).stdout)).toMatchObject({ runId: back.runId, created: false });

    // The evaluation transform's pixels, as a PNG at the input size, so both sides see the same image.
    const image = join(SAMPLE_IMAGES, 'rocket-03.jpg');
    const png = join(dir, 'rocket-32.png');
    const px = await evalImage(image, 32);
    await sharp(px.data, { raw: { width: 32, height: 32, channels: 3 } })
      .png()
      .toFile(png);
    const ours = localmim(['features', String(back.runId), '--image', image, '--home', home, '--json']);
    expect(ours.code, ours.stderr).toBe(0);
    const a = Float32Array.from((JSON.parse(ours.stdout) as { values: number[] }).values);
    const b = Float32Array.from((JSON.parse(python([join(job, 'train.py'), '--features', png])) as { values: number[] }).values);
    expect(a.length).toBe(32);
    expect(relative(a, b)).toBeLessThan(1e-4);
  });

  test('a continued run comes back as the same run, its curve on the same step axis', async () => {
    const store = new Store(join(home, 'localmim.db'));
    const source = store.runs().find((x) => x.backend !== 'torch')!;
    store.close();
    const job = join(dir, 'continued');
    const r = scaleOut(job, [String(source.id)]);
    expect(r.code, r.stderr).toBe(0);
    const run = await launch(job, ['--max-steps', '5'], rank(0, 1, port()));
    expect(run.out).toMatch(/starting at step 3 from init\.safetensors/);
    const back = JSON.parse(localmim(['scale-in', job, '--home', home, '--json']).stdout) as { runId: number };
    expect(back).toMatchObject({ runId: source.id, step: 5, created: false });
    const s = new Store(join(home, 'localmim.db'));
    expect(s.metrics(source.id).map((x) => x.step)).toEqual([1, 2, 3, 4, 5]);
    expect(s.checkpoints(source.id).map((c) => c.step)).toContain(5);
    s.close();
  });

  test("the app's Scale out… action writes the same folder and shows the commands", async () => {
    const service = new Service(home, () => launchNodeJob());
    try {
      const run = service.store.runs().find((x) => x.backend !== 'torch')!;
      const job = (await service.call('jobs.scaleOut', { runId: run.id, step: 3, datasetId: run.datasetId })) as {
        out: string;
        readme: string;
      };
      expect(job.out).toBe(join(home, 'jobs', `run-${run.id}-3`));
      expect(readFileSync(join(job.out, 'README.md'), 'utf8')).toBe(job.readme);
      expect(job.readme).toContain('torchrun --standalone --nproc_per_node 8 train.py');
      expect(job.readme).toMatch(/\| 1 node × 8 GPUs \| 8 \| 64 \| 3\.000e-3 \|/); // an absolute lr does not scale
      expect(readFileSync(join(job.out, 'train.py'), 'utf8')).toBe(readFileSync(TRAIN_PY, 'utf8'));
      const fresh = (await service.call('jobs.scaleOut', { config: { model: tiny }, datasetId: run.datasetId })) as { readme: string };
      expect(fresh.readme).toMatch(/\| 1 GPU \| 1 \| 32 \| 2\.500e-5 \|/); // blr 2e-4 · 32 / 256
      await expect(service.call('jobs.scaleOut', { runId: run.id, config: {}, datasetId: run.datasetId })).rejects.toThrow(
        /jobs.scaleOut: runId: give either runId or config/,
      );
    } finally {
      await service.shutdown();
    }
  });
});
