import * as tf from '@tensorflow/tfjs';
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, realpathSync, renameSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest';
import type { ApiEvent } from '../core/api.js';
import { parseRunConfig } from '../core/config.js';
import { indexFolder } from '../core/data/indexer.js';
import { SAMPLE_IMAGES, homePaths, isAlive } from '../core/home.js';
import { launchNodeJob } from '../core/jobs/launch.js';
import { checkpointRef, loadRef } from '../core/runs/checkpoints.js';
import { runTrainJob } from '../core/runs/job.js';
import { begin, prepare } from '../core/runs/lifecycle.js';
import { RunRecorder } from '../core/runs/recorder.js';
import { Service } from '../core/service/service.js';
import { openDatabase } from '../core/store/db.js';
import { Store } from '../core/store/store.js';
import { AdamW } from '../core/train/adamw.js';
import { loadCheckpoint, saveCheckpoint } from '../core/train/checkpoint.js';
import type { ParamStore } from '../core/model/module.js';
import type { TrainEvent } from '../core/train/loop.js';
import { ensureBuilt, localmim } from './support/cli.js';
import { syntheticImages } from './support/images.js';
import { backend } from './support/setup.js';

const BIN = fileURLToPath(new URL('../bin/localmim.js', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'localmim-runs-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// A model small enough that a step takes a fraction of a second; 37 steps of 8 sample images per epoch.
const tinyModel = { D: 32, depth: 8, heads: 2, decoderDim: 16, decoderHeads: 2, imgSize: 32, patchSize: 8 };
const tiny = (epochs = 1) => ({ model: tinyModel, optim: { epochs, batch: 8, warmupEpochs: 0.3, blr: 2e-3 }, seed: 3 });
const tinyFile = join(dir, 'tiny.json');
writeFileSync(tinyFile, JSON.stringify(tiny()));

/** A service on its own data folder, with the events it emits. */
function service(name: string, options: ConstructorParameters<typeof Service>[2] = {}) {
  const s = new Service(join(dir, name), () => launchNodeJob(), options);
  const events: ApiEvent[] = [];
  s.subscribe((e) => events.push(e));
  const until = (pred: (e: ApiEvent) => boolean, timeoutMs = 120_000) =>
    new Promise<ApiEvent>((resolve, reject) => {
      const found = events.find(pred);
      if (found) return resolve(found);
      const timer = setTimeout(() => reject(new Error(`no such event in ${timeoutMs} ms`)), timeoutMs);
      const stop = s.subscribe((e) => {
        if (!pred(e)) return;
        clearTimeout(timer);
        stop();
        resolve(e);
      });
    });
  const call = <T = Record<string, unknown>>(method: string, args: unknown) => s.call(method, args) as Promise<T>;
  const addSample = async () => {
    await call('datasets.addSample', {});
    return ((await until((e) => e.type === 'dataset.indexed')) as { datasetId: number }).datasetId;
  };
  const status = (runId: number, status: string) => until((e) => e.type === 'run.status' && e.runId === runId && e.status === status);
  return { s, events, until, call, addSample, status, home: join(dir, name) };
}

describe('ownership of a running run', () => {
  test('a live job is never taken over: not by the CLI, not by a second server on the same data folder', async () => {
    const a = service('owned');
    const datasetId = await a.addSample();
    const { runId } = await a.call<{ runId: number }>('runs.create', { datasetId, config: tiny(20) });
    await a.until((e) => e.type === 'run.metrics' && e.runId === runId);
    const row = a.s.store.run(runId)!;
    expect(row.pid).not.toBe(process.pid); // the trainer's own process
    expect(isAlive(row.pid!)).toBe(true);

    expect(localmim(['runs', '--home', a.home]).stdout).toMatch(new RegExp(`^${runId} +running`, 'm'));
    const cli = localmim(['pretrain', '--home', a.home, '--resume', String(runId)]);
    expect(cli.code).toBe(1);
    expect(cli.stderr).toMatch(new RegExp(`run ${runId} is running in process ${row.pid}`));

    const b = new Service(a.home, () => launchNodeJob());
    await expect(b.call('runs.resume', { id: runId })).rejects.toMatchObject({ kind: 'conflict' });
    await expect(b.call('runs.extend', { id: runId, epochs: 1 })).rejects.toMatchObject({ kind: 'conflict' });
    for (const method of ['runs.pause', 'runs.cancel'])
      await expect(b.call(method, { id: runId })).rejects.toMatchObject({
        kind: 'conflict',
        message: `run ${runId} is running elsewhere (process ${row.pid}, another server or a terminal): pause it there`,
      });
    expect(b.store.run(runId)!.status).toBe('running');
    await b.shutdown();

    await a.call('runs.pause', { id: runId });
    await a.status(runId, 'paused');
    await a.s.shutdown();
  });
});

test('a run cancelled just before shutdown: its job exits after the store has closed, and nothing throws', async () => {
  const a = service('cancelled');
  const datasetId = await a.addSample();
  const { runId } = await a.call<{ runId: number }>('runs.create', { datasetId, config: tiny(20) });
  await a.until((e) => e.type === 'run.metrics' && e.runId === runId);
  const pid = a.s.store.run(runId)!.pid!;
  await a.call('runs.cancel', { id: runId });
  await a.s.shutdown();
  // The killed job's exit arrives now; before the fix its handler wrote to the closed store (an uncaught error).
  await vi.waitFor(() => expect(isAlive(pid)).toBe(false), { timeout: 10_000 });
  await new Promise((r) => setTimeout(r, 200));
});

test("in the app, resume takes the folder a run's images moved to, and says what it found", async () => {
  const t = service('app-moved');
  const folder = await imageFolder('app-moved-from', 12);
  await t.call('datasets.add', { path: folder });
  const { datasetId } = (await t.until((e) => e.type === 'dataset.indexed')) as { datasetId: number };
  const { runId } = await t.call<{ runId: number }>('runs.create', { datasetId, config: tiny(200) });
  await t.until((e) => e.type === 'run.metrics' && e.runId === runId);
  await t.call('runs.pause', { id: runId });
  await t.status(runId, 'paused');
  const moved = join(dir, 'app-moved-to');
  renameSync(folder, moved);
  await expect(t.call('runs.resume', { id: runId, data: join(dir, 'nowhere') })).rejects.toThrow(
    /nowhere: cannot open the folder \(ENOENT\)$/,
  );
  const r = await t.call('runs.resume', { id: runId, data: moved });
  expect(r).toEqual({
    ok: true,
    dataset: `run ${runId}: images re-checked in ${realpathSync(moved)}: 0 missing, 12 moved/matched by content, 0 new (12 to train on)`,
  });
  const { run } = await t.call<{ run: { datasetId: number; skippedImages: number } }>('runs.get', { id: runId });
  expect(t.s.store.datasetById(run.datasetId)!.root).toBe(realpathSync(moved));
  expect(run.skippedImages).toBe(0);
  await t.call('runs.pause', { id: runId });
  await t.status(runId, 'paused');
  await t.s.shutdown();
});

describe('the service', () => {
  const t = service('service', { concurrency: 1 });
  let datasetId = 0;
  beforeAll(async () => {
    datasetId = await t.addSample();
  });
  afterAll(() => t.s.shutdown());

  test('runs beyond the concurrency wait as queued and start when a slot frees', async () => {
    const first = await t.call<{ runId: number }>('runs.create', { datasetId, config: tiny(1) });
    const second = await t.call<{ runId: number }>('runs.create', { datasetId, config: tiny(1) });
    expect(t.s.store.run(second.runId)!.status).toBe('queued');
    await t.status(first.runId, 'finished');
    await t.status(second.runId, 'finished');
    const order = t.events.filter((e) => e.type === 'run.status' && e.status === 'running').map((e) => (e as { runId: number }).runId);
    expect(order).toEqual([first.runId, second.runId]);
  });

  test('configs that cannot fit are refused before anything is written', async () => {
    const runs = t.s.store.runs().length;
    const huge = { ...tiny(), model: { ...tinyModel, imgSize: 1024 } };
    await expect(t.call('runs.create', { datasetId, config: huge })).rejects.toThrow(/needs about [\d.]+ GB/);
    const check = await t.call<{ ok: boolean; errors: { path: string }[] }>('config.check', { config: huge });
    expect(check).toMatchObject({ ok: false, errors: [{ path: 'model' }] });
    const absurd = await t.call<{ ok: boolean; errors: { path: string }[] }>('config.check', { config: { model: { imgSize: 1e9 } } });
    expect(absurd.errors.map((e) => e.path)).toContain('model.imgSize');
    await expect(t.call('runs.create', { datasetId, config: { ...tiny(), optim: { epoch: 3 } } })).rejects.toThrow(
      /optim\.epoch: unknown field/,
    );
    await expect(t.call('runs.create', { datasetId, config: tiny(), colour: 'red' })).rejects.toThrow(/colour: unknown field/);
    expect(t.s.store.runs()).toHaveLength(runs);
  });

  test('train N more epochs keeps a fine-tune a fine-tune; eval events reach the app; export works after', async () => {
    const labeled = join(dir, 'labeled');
    for (const f of readdirSync(SAMPLE_IMAGES).filter((f) => /^(coffee|rocket)-/.test(f))) {
      mkdirSync(join(labeled, f.split('-')[0]!), { recursive: true });
      symlinkSync(join(SAMPLE_IMAGES, f), join(labeled, f.split('-')[0]!, f));
    }
    await t.call('datasets.add', { path: labeled });
    const labeledId = ((await t.until((e) => e.type === 'dataset.indexed' && e.datasetId !== datasetId)) as { datasetId: number })
      .datasetId;
    const source = t.s.store.runs().find((r) => r.kind === 'pretrain' && r.status === 'finished')!;
    const { runId } = await t.call<{ runId: number }>('finetune.create', {
      from: { runId: source.id },
      datasetId: labeledId,
      finetune: { recipe: 'official', baselines: false, epochs: 1, batch: 16, warmupEpochs: 0 },
    });
    await t.status(runId, 'finished');
    expect(t.events.some((e) => e.type === 'run.eval' && e.runId === runId)).toBe(true);

    const r = await t.call<{ ok: boolean; epochs: number }>('runs.extend', { id: runId, epochs: 1 });
    expect(r.epochs).toBe(2);
    await t.until((e) => e.type === 'run.status' && e.runId === runId && e.status === 'finished' && t.s.store.run(runId)!.step > 5);
    const run = t.s.store.run(runId)!;
    expect(run.kind).toBe('finetune');
    expect(run.config).toMatchObject({ finetune: { epochs: 2 }, from: { runId: source.id } });
    const exported = await t.call<{ files: string[] }>('exports.create', { runId, format: 'safetensors' });
    expect(exported.files).toContain('model.safetensors');
  });

  test('a bad extend or resume changes nothing and starts nothing', async () => {
    const imported = t.s.store.createRun({
      name: 'imported',
      datasetId: null,
      config: { model: tinyModel },
      backend: 'import',
      kind: 'import',
      status: 'finished',
      pid: null,
    });
    await expect(t.call('runs.extend', { id: imported.id, epochs: 1 })).rejects.toMatchObject({ kind: 'conflict' });
    await expect(t.call('runs.extend', { id: 999, epochs: 1 })).rejects.toMatchObject({ kind: 'not-found' });
    expect(t.s.store.run(imported.id)).toMatchObject({ status: 'finished', config: { model: tinyModel } });
  });

  test('a folder of 3000 images is indexed through a job process, its large result delivered before the job exits', async () => {
    const big = join(dir, 'big');
    mkdirSync(big);
    await Promise.all(
      Array.from({ length: 3000 }, (_, i) => {
        const px = Buffer.alloc(16 * 16 * 3, i % 251);
        px.writeUInt16LE(i, 0);
        return sharp(px, { raw: { width: 16, height: 16, channels: 3 } })
          .png()
          .toFile(join(big, `img-${String(i).padStart(4, '0')}.png`));
      }),
    );
    await t.call('datasets.add', { path: big });
    const e = (await t.until((e) => e.type === 'dataset.indexed' && t.s.store.datasetById(e.datasetId)?.root === big)) as {
      datasetId: number;
    };
    expect(t.s.store.images(e.datasetId, 'ok')).toHaveLength(3000);
  });
});

describe('resume', () => {
  test('when every checkpoint is damaged, resume says so and refuses, keeping the history; --restart starts over', () => {
    const home = join(dir, 'corrupt');
    const r = localmim(['pretrain', '--json', '--home', home, '--config', tinyFile, '--checkpoint-every', '5', '--max-steps', '12']);
    expect(r.code, r.stderr).toBe(0);
    const store = new Store(join(home, 'localmim.db'));
    const metrics = store.metrics(1).length;
    for (const c of store.checkpoints(1)) writeFileSync(c.path, 'garbage');
    store.close();
    const refused = localmim(['pretrain', '--home', home, '--resume', '1']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).not.toMatch(/^\s+at /m);
    expect(refused.stderr).toMatch(/run 1: none of its 3 checkpoint\(s\) can be read .*--restart/);
    const after = new Store(join(home, 'localmim.db'));
    expect(after.metrics(1)).toHaveLength(metrics);
    expect(after.run(1)!.status).toBe('paused');
    after.close();
    const restarted = localmim(['pretrain', '--json', '--home', home, '--resume', '1', '--restart', '--max-steps', '2']);
    expect(restarted.code, restarted.stderr).toBe(0);
    expect(JSON.parse(restarted.stdout.split('\n')[0]!)).toMatchObject({ type: 'start', step: 0 });
  });

  test('resume re-checks the images: a moved folder is found by content with --data, and what changed is one line', async () => {
    const home = join(dir, 'moved');
    const config = join(dir, 'tiny-10.json');
    writeFileSync(config, JSON.stringify(tiny(10)));
    const folder = await imageFolder('moved-from', 12);
    const first = localmim(['pretrain', '--home', home, '--config', config, '--data', folder, '--max-steps', '2']);
    expect(first.code, first.stderr).toBe(0);
    const real = realpathSync(folder);
    const moved = join(dir, 'moved-to');
    renameSync(folder, moved);
    rmSync(join(home, 'cache'), { recursive: true }); // no decoded copies: the old paths are really gone

    const lost = localmim(['pretrain', '--home', home, '--resume', '1', '--max-steps', '3']);
    expect(lost.code).toBe(1);
    expect(lost.stderr.trim().split('\n').at(-1)).toBe(
      `localmim pretrain: run 1: its images cannot be found (${real}: cannot open the folder (ENOENT)); if the folder moved, resume with --data DIR, its new place (in the app: "Resume from this folder")`,
    );
    unlinkSync(join(moved, 'img-3.png'));
    const raw = { width: 40, height: 40, channels: 3 } as const;
    await sharp(syntheticImages(1, 40, 99)[0]!.data, { raw })
      .png()
      .toFile(join(moved, 'new.png'));
    const found = localmim(['pretrain', '--home', home, '--resume', '1', '--data', moved, '--max-steps', '3']);
    expect(found.code, found.stderr).toBe(0);
    const to = realpathSync(moved);
    expect(found.stderr).toContain(`run 1: images re-checked in ${to}: 1 missing, 11 moved/matched by content, 1 new (12 to train on)\n`);
    expect(found.stderr).toMatch(/run 1: 10 steps \(1 per epoch\), from step 2/);
    const store = new Store(join(home, 'localmim.db'));
    expect(store.datasetById(store.run(1)!.datasetId!)!.root).toBe(to);
    store.close();

    unlinkSync(join(moved, 'img-4.png'));
    const again = localmim(['pretrain', '--home', home, '--resume', '1', '--max-steps', '4']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toContain(`run 1: images re-checked in ${to}: 1 missing, 0 moved/matched by content, 0 new (11 to train on)\n`);
  });

  test('bad flags are refused before a run exists', () => {
    const home = join(dir, 'flags');
    for (const [flag, value, message] of [
      ['--keep', '0', /--keep: expected a positive integer/],
      ['--checkpoint-every', '0', /--checkpoint-every: expected a positive integer/],
      ['--checkpoint-minutes=-1', '', /--checkpoint-minutes: expected a positive number/],
      ['--epochs', '1000000000', /optim\.epochs: Too big/],
      ['--max-steps', 'x', /--max-steps: expected a positive integer/],
      ['--init', '99', /no run 99/],
    ] as const) {
      const r = localmim(['pretrain', '--home', home, '--config', tinyFile, flag, ...(value ? [value] : [])]);
      expect(r.code, flag).not.toBe(0);
      expect(r.stderr, flag).toMatch(message);
    }
    expect(localmim(['runs', '--home', home]).stdout).toMatch(/no runs yet/);
  });

  test('--config is strict: unknown fields and non-objects are errors naming them', () => {
    const home = join(dir, 'strict');
    const file = (name: string, body: string) => {
      writeFileSync(join(dir, name), body);
      return join(dir, name);
    };
    const cases: [string, RegExp][] = [
      [file('typo.json', '{"optim":{"epoch":3}}'), /optim\.epoch: unknown field/],
      [file('top.json', '{"optimizer":{}}'), /optimizer: unknown field/],
      [file('null.json', 'null'), /must hold a JSON object/],
      [file('section.json', '{"model":null}'), /model must be an object/],
    ];
    for (const [path, message] of cases) {
      const r = localmim(['pretrain', '--home', home, '--config', path]);
      expect(r.code, path).not.toBe(0);
      expect(r.stderr.trim().split('\n'), path).toHaveLength(1);
      expect(r.stderr, path).toMatch(message);
    }
  });
});

test('temp files of writers that died mid-write are removed on resume and when the service starts; live ones stay', async () => {
  const home = join(dir, 'temps');
  const first = localmim(['pretrain', '--json', '--home', home, '--config', tinyFile, '--max-steps', '1']);
  expect(first.code, first.stderr).toBe(0);
  const dead = spawnSync(process.execPath, ['-e', '0']).pid!;
  const temp = (folder: string, name: string) => {
    mkdirSync(folder, { recursive: true });
    writeFileSync(join(folder, name), Buffer.alloc(2_500_000));
    return name;
  };
  const runDir = join(home, 'runs', '1');
  const temps = (folder: string) => readdirSync(folder).filter((n) => n.includes('.tmp-'));
  temp(runDir, `ckpt-0000020.safetensors.tmp-${dead}`);
  const live = temp(runDir, `ckpt-0000020.safetensors.tmp-${process.pid}`); // this test's process is alive: its write goes on
  const resumed = localmim(['pretrain', '--home', home, '--resume', '1', '--max-steps', '2']);
  expect(resumed.code, resumed.stderr).toBe(0);
  expect(resumed.stderr).toContain(
    `warning: removed ckpt-0000020.safetensors.tmp-${dead} (2.5 MB), left half-written by process ${dead}, which died\n`,
  );
  expect(temps(runDir)).toEqual([live]);

  temp(runDir, `ckpt-0000030.safetensors.tmp-${dead}`);
  temp(join(home, 'cache'), `0123abcd-crop32-0.2.rgb.tmp-${dead}-7`);
  const s = new Service(home, () => launchNodeJob());
  await s.shutdown();
  expect(temps(runDir)).toEqual([live]);
  expect(temps(join(home, 'cache'))).toEqual([]);
});

describe('a job whose service dies', () => {
  test('checkpoints and stops cleanly, quietly; resume continues from that checkpoint, not the last recorded one', async () => {
    ensureBuilt();
    const home = join(dir, 'orphan');
    const server = spawn(process.execPath, [BIN, 'serve', '--port', '0', '--home', home], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    server.stderr.on('data', (d) => (output += d));
    const url = await new Promise<string>((resolve) =>
      createInterface({ input: server.stdout }).on('line', (l) => l.startsWith('LocalMIM Studio: ') && resolve(l.slice(17))),
    );
    const { origin, searchParams } = new URL(url);
    const api = async (method: string, args: unknown) => {
      const res = await fetch(`${origin}/api/${method}`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${searchParams.get('token')}`, 'Content-Type': 'application/json' },
        body: JSON.stringify(args),
      });
      return (await res.json()) as { ok: boolean; result: Record<string, unknown> };
    };
    await api('datasets.addSample', {});
    await expect.poll(async () => (await api('datasets.list', {})).result, { timeout: 60_000 }).toHaveLength(1);
    const { result } = await api('runs.create', { datasetId: 1, config: tiny(20) });
    // Past the first epoch's recorded checkpoint (step 37): the one it writes as its server dies is newer.
    const progress = async () => {
      const got = (await api('runs.get', { id: result.runId })).result as { metrics: unknown[]; checkpoints: unknown[] };
      return got.checkpoints.length && got.metrics.length;
    };
    await expect.poll(progress, { timeout: 120_000, interval: 200 }).toBeGreaterThan(40);
    const store = new Store(join(home, 'localmim.db'));
    const pid = store.run(1)!.pid!;
    const seen = store.metrics(1).at(-1)!.step;
    store.close();

    output = '';
    server.kill('SIGKILL');
    await expect.poll(() => isAlive(pid), { timeout: 60_000 }).toBe(false);
    expect(output.length, output.slice(0, 500)).toBeLessThan(500);
    const files = readdirSync(join(home, 'runs', '1')).filter((n) => n.endsWith('.safetensors'));
    expect(files).toHaveLength(2);
    const saved = loadCheckpoint(join(home, 'runs', '1', files.sort().at(-1)!)).state.step;
    expect(saved).toBeGreaterThanOrEqual(seen);

    const r = localmim(['pretrain', '--json', '--home', home, '--resume', '1', '--max-steps', String(saved + 1)]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout.split('\n')[0]!)).toMatchObject({ type: 'start', step: saved });
    const after = new Store(join(home, 'localmim.db'));
    expect(after.checkpoints(1).map((c) => c.step)).toEqual([37, saved, saved + 1]);
    after.close();
  });
});

/** `n` small PNGs `img-0.png …` in a new folder. */
async function imageFolder(name: string, n: number): Promise<string> {
  const folder = join(dir, name);
  mkdirSync(folder, { recursive: true });
  const raw = { width: 40, height: 40, channels: 3 } as const;
  await Promise.all(
    syntheticImages(n, 40, 1).map((img, i) =>
      sharp(img.data, { raw })
        .png()
        .toFile(join(folder, `img-${i}.png`)),
    ),
  );
  return folder;
}

test('images deleted during training are skipped, told of and counted on the run; too few left stop with one line saying how to go on', async () => {
  const home = join(dir, 'deleted');
  const folder = await imageFolder('deleted-images', 10);
  const store = new Store(join(home, 'localmim.db'));
  const { datasetId } = await indexFolder(store, folder);
  const prepared = prepare(store, home, { new: 'pretrain', datasetId, config: parseRunConfig(tiny(9)) }, backend.chosen);
  const job = { ...begin(store, prepared, { pid: process.pid, status: 'running', backend: backend.chosen }), cadence: {}, previewEvery: 2 };
  const recorder = new RunRecorder(store, job.runId);
  const warnings: string[] = [];
  const hooks = { onEvent: (e: TrainEvent) => recorder.handle(e), warn: (m: string) => warnings.push(m) };
  for (const i of [0, 5]) unlinkSync(join(folder, `img-${i}.png`)); // img-0 is also the first preview probe
  expect(await runTrainJob({ ...job, stopAtStep: 4 }, hooks)).toEqual({ step: 4, status: 'paused' });
  expect(warnings.filter((w) => !w.startsWith('preview')).sort()).toEqual(
    [0, 5].map((i) =>
      expect.stringMatching(
        `^skipped ${join(folder, `img-${i}.png`)}: the file is missing; another image takes its place \\(\\d readable\\)$`,
      ),
    ),
  );
  expect(store.run(job.runId)!.skippedImages).toBe(2);

  unlinkSync(join(folder, 'img-9.png'));
  rmSync(join(home, 'cache'), { recursive: true }); // else its decoded copy would still serve
  const resumeFrom = store.checkpoints(job.runId).at(-1)!.path;
  await expect(runTrainJob({ ...job, resumeFrom, stopAtStep: 9 }, hooks)).rejects.toThrow(
    new RegExp(
      `^data: only 7 of 10 images can still be read \\(e\\.g\\. .*img-\\d\\.png cannot\\), fewer than one step of 8; the last checkpoint is intact: ` +
        `restore the images, or point at their new folder with localmim pretrain --resume ${job.runId} --data DIR \\(in the app: "Resume from this folder"\\)$`,
    ),
  );
  store.close();
});

test('a preview that cannot be written is reported and skipped; training goes on', async () => {
  const home = join(dir, 'previews');
  const store = new Store(join(home, 'localmim.db'));
  const indexed = await indexFolder(store, SAMPLE_IMAGES);
  const config = parseRunConfig(tiny());
  const prepared = prepare(store, home, { new: 'pretrain', datasetId: indexed.datasetId, config }, backend.chosen);
  const job = begin(store, prepared, { pid: process.pid, status: 'running', backend: backend.chosen });
  mkdirSync(join(home, 'runs', String(job.runId)), { recursive: true });
  writeFileSync(join(home, 'runs', String(job.runId), 'previews'), 'a file where the previews folder should be');
  const warnings: string[] = [];
  const r = await runTrainJob(
    { ...job, cadence: {}, previewEvery: 2, stopAtStep: 4 },
    { onEvent: () => {}, warn: (m) => warnings.push(m) },
  );
  store.close();
  expect(r).toEqual({ step: 4, status: 'paused' });
  expect(warnings[0]).toMatch(/^preview at step 1 skipped: /);
  expect(warnings).toHaveLength(3);
});

test('migration 30 keeps runs, metrics and checkpoints, and allows queued runs', () => {
  const path = join(dir, 'v20.sqlite');
  const old = openDatabase(path, 20);
  old.prepare(`INSERT INTO runs (name, config, backend, status, kind) VALUES ('old', '{}', 'wasm', 'finished', 'finetune')`).run();
  old
    .prepare(`INSERT INTO metrics (run_id, step, epoch, samples, loss, losses, lr, images_per_s) VALUES (1, 1, 0.1, 8, 0.5, '[]', 1e-4, 3)`)
    .run();
  old.prepare(`INSERT INTO checkpoints (run_id, step, epoch, path, size, hash) VALUES (1, 1, 0.1, '/x', 1, 'h')`).run();
  old.close();
  const store = new Store(path);
  expect(store.run(1)).toMatchObject({ name: 'old', kind: 'finetune', status: 'finished' });
  expect(store.metrics(1)).toHaveLength(1);
  expect(store.checkpoints(1)).toHaveLength(1);
  store.updateRun(1, { status: 'queued' });
  expect(store.run(1)!.status).toBe('queued');
  expect(store.db.pragma('foreign_keys', { simple: true })).toBe(1);
  store.db.prepare('DELETE FROM runs WHERE id = 1').run();
  expect(store.metrics(1)).toHaveLength(0);
  store.close();
});

test('folder paths in API calls must be absolute: a relative one would resolve against the server’s folder', async () => {
  const a = service('relative');
  const message = 'must be an absolute path (a relative one would resolve against the server’s folder)';
  await expect(a.call('datasets.add', { path: '../../etc' })).rejects.toMatchObject({
    kind: 'bad-request',
    message: `datasets.add: path: ${message}`,
  });
  await expect(a.call('runs.resume', { id: 1, data: 'photos' })).rejects.toMatchObject({
    kind: 'bad-request',
    message: `runs.resume: data: ${message}`,
  });
  expect(a.s.store.datasetSummaries()).toEqual([]);
  await a.s.shutdown();
});

test('a checkpoint look-up whose files retention deleted before the read (a running run) takes the newer file that replaced them', async () => {
  const home = join(dir, 'retention');
  const store = new Store(homePaths(home).db);
  const run = store.createRun({ name: 'r', datasetId: null, config: { model: tinyModel }, backend: 'cpu', kind: 'import' });
  const params = new Map([['w', tf.tensor([1, 2, 3])]]);
  const save = async (step: number) => {
    const path = homePaths(home).checkpoint(run.id, step);
    const written = await saveCheckpoint(
      path,
      { params } as unknown as { params: ParamStore },
      new AdamW(new Map(), tiny().optim as never),
      {
        step,
        epoch: 0,
        loss: 1,
        config: {},
      },
    );
    return { runId: run.id, step, epoch: 0, loss: 1, path, ...written };
  };
  store.addCheckpoint(await save(4));
  const ref = checkpointRef(store, String(run.id)); // what the service hands the export job
  rmSync(homePaths(home).checkpoint(run.id, 4)); // retention, as the running job writes step 8
  await save(8);
  expect(loadRef(ref)).toMatchObject({ step: 8, path: homePaths(home).checkpoint(run.id, 8) });
  rmSync(homePaths(home).checkpoint(run.id, 8));
  expect(() => loadRef(ref)).toThrow(`run ${run.id} has no intact checkpoint yet`);
  tf.dispose([...params.values()]);
  store.close();
});
