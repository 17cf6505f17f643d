import Database from 'better-sqlite3';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statfsSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import sharp from 'sharp';
import { afterAll, describe, expect, test, vi } from 'vitest';
import type { ApiEvent } from '../core/api.js';
import { NoRoomError, writeAtomic, type WriteFn } from '../core/atomic.js';
import { parseRunConfig } from '../core/config.js';
import { indexFolder } from '../core/data/indexer.js';
import { launchNodeJob } from '../core/jobs/launch.js';
import { LocalMIM } from '../core/model/localmim.js';
import { runTrainJob } from '../core/runs/job.js';
import { begin, prepare } from '../core/runs/lifecycle.js';
import { RunRecorder } from '../core/runs/recorder.js';
import { jobSlots } from '../core/service/scheduler.js';
import { Service } from '../core/service/service.js';
import { Store } from '../core/store/store.js';
import { AdamW } from '../core/train/adamw.js';
import { loadCheckpoint, saveCheckpoint } from '../core/train/checkpoint.js';
import type { TrainEvent } from '../core/train/loop.js';
import { syntheticImages } from './support/images.js';
import { backend } from './support/setup.js';

const dir = mkdtempSync(join(tmpdir(), 'localmim-durable-'));
const mounts: string[] = [];
afterAll(() => {
  for (const m of mounts) spawnSync('umount', [m]);
  rmSync(dir, { recursive: true, force: true });
});

/** A tmpfs of `bytes` at `path`, where this machine lets us mount one (root, in a container that allows it). */
function tmpfs(path: string, bytes: number): boolean {
  mkdirSync(path, { recursive: true });
  const ok = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${bytes}`, 'tmpfs', path]).status === 0;
  if (ok) mounts.push(path);
  return ok;
}

/** Fills the disk of `folder` until `leave` bytes are free. */
function fill(folder: string, leave: number): void {
  const { bavail, bsize } = statfsSync(folder);
  writeFileSync(join(folder, 'filler'), Buffer.alloc(Math.max(0, bavail * bsize - leave)));
}

const tinyModel = { D: 32, depth: 4, heads: 2, decoderDim: 16, decoderHeads: 2, imgSize: 32, patchSize: 8 };
const tiny = (epochs: number) => ({ model: tinyModel, optim: { epochs, batch: 8, warmupEpochs: 0.3, blr: 2e-3 }, seed: 3 });
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** `n` small PNGs in a new folder (12 of them: one step of 8 per epoch, so every step checkpoints). */
async function imageFolder(name: string, n = 12): Promise<string> {
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

describe('every file write is whole or absent', () => {
  test('short writes are written on until every byte is; a short write then ENOSPC leaves the old file, no temp, and names the file', () => {
    const path = join(dir, 'short', 'file.bin');
    const data = Buffer.from(Array.from({ length: 5000 }, (_, i) => i % 251));
    const trickle: WriteFn = (fd, d, offset, length) => writeSync(fd, d, offset, Math.min(length, 777));
    writeAtomic(path, data, trickle);
    expect(readFileSync(path)).toEqual(data);

    let calls = 0;
    // What a full tmpfs does: part of the write is taken without an error, the next call fails.
    const fullDisk: WriteFn = (fd, d, offset, length) => {
      if (calls++ === 0) return writeSync(fd, d, offset, Math.min(length, 1000));
      throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
    };
    expect(() => writeAtomic(path, Buffer.alloc(9000, 7), fullDisk)).toThrow(
      new NoRoomError(`${path}.tmp-${process.pid}: no room left on its disk (ENOSPC); nothing was saved`),
    );
    expect(readFileSync(path)).toEqual(data);
    expect(readdirSync(dirname(path))).toEqual(['file.bin']);
  });

  const disk = join(dir, 'small-disk');
  const mounted = tmpfs(disk, 1 << 20);
  test.skipIf(!mounted)('on a full disk, a checkpoint is refused before a byte is written; a write cut short is removed', async () => {
    const config = parseRunConfig(tiny(1));
    const model = new LocalMIM(config.model, config.seed);
    const optimizer = new AdamW(model.params.vars, config.optim);
    const path = join(disk, 'runs', '1', 'ckpt-0000005.safetensors');
    await expect(saveCheckpoint(path, model, optimizer, { step: 5, epoch: 1, loss: null, config })).rejects.toThrow(
      new RegExp(`^${path}: needs \\d+\\.\\d MB and its disk has 1\\.0 MB free; free some space, then resume$`),
    );
    optimizer.dispose();
    model.dispose();
    expect(readdirSync(dirname(path))).toEqual([]);
    // The write itself, past the check: Linux takes what fits (a short count), then refuses the rest.
    const big = join(disk, 'big.bin');
    expect(() => writeAtomic(big, Buffer.alloc(2 << 20, 1))).toThrow(NoRoomError);
    expect(readdirSync(disk)).toEqual(['runs']);
  });

  test.skipIf(!tmpfs(join(dir, 'run-disk'), 8 << 20))(
    'a checkpoint that will not fit pauses the run with one line; the one before it is intact',
    async () => {
      const home = join(dir, 'run-disk');
      const store = new Store(join(home, 'localmim.db'));
      const { datasetId } = await indexFolder(store, await imageFolder('run-disk-images'));
      const prepared = prepare(store, home, { new: 'pretrain', datasetId, config: parseRunConfig(tiny(9)) }, backend.chosen);
      const job = {
        ...begin(store, prepared, { pid: process.pid, status: 'running', backend: backend.chosen }),
        cadence: {},
        previewEvery: 0,
      };
      const recorder = new RunRecorder(store, job.runId, 10);
      const onEvent = (e: TrainEvent) => {
        recorder.handle(e);
        if (e.type === 'checkpoint' && e.step === 2) fill(home, 600 << 10); // room for the database, not a checkpoint
      };
      expect(await runTrainJob({ ...job, stopAtStep: 5 }, { onEvent, warn: () => undefined })).toEqual({ step: 3, status: 'paused' });
      const ckpt3 = join(home, 'runs', String(job.runId), 'ckpt-0000003.safetensors');
      expect(store.run(job.runId)).toMatchObject({
        status: 'paused',
        error: expect.stringMatching(
          new RegExp(`^${ckpt3}: needs \\d+\\.\\d MB and its disk has 0\\.\\d MB free; free some space, then resume$`),
        ),
      });
      expect(store.checkpoints(job.runId).map((c) => c.step)).toEqual([1, 2]);
      expect(readdirSync(dirname(ckpt3)).filter((n) => n.startsWith('ckpt-'))).toEqual([
        'ckpt-0000001.safetensors',
        'ckpt-0000002.safetensors',
      ]);
      expect(loadCheckpoint(store.checkpoints(job.runId)[1]!.path).state.step).toBe(2);
      store.close();
    },
  );
});

/** A service on its own data folder, with the events it emits. */
function service(name: string, options: ConstructorParameters<typeof Service>[2] = {}) {
  const home = join(dir, name);
  const s = new Service(home, () => launchNodeJob(), options);
  const events: ApiEvent[] = [];
  s.subscribe((e) => events.push(e));
  const until = (pred: (e: ApiEvent) => boolean, timeoutMs = 60_000) =>
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
  /** A run training on a small folder, once its first steps are recorded. */
  const training = async () => {
    await call('datasets.add', { path: await imageFolder(`${name}-images`) });
    const { datasetId } = (await until((e) => e.type === 'dataset.indexed')) as { datasetId: number };
    const { runId } = await call<{ runId: number }>('runs.create', { datasetId, config: tiny(400) });
    await until((e) => e.type === 'run.metrics' && e.runId === runId);
    return runId;
  };
  return { s, events, until, call, training, home, db: join(home, 'localmim.db') };
}

/** The longest the event loop went without running a 10 ms timer, from now until `stop`. */
function loopLag(): { stop: () => number } {
  let last = performance.now();
  let worst = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    worst = Math.max(worst, now - last);
    last = now;
  }, 10);
  return { stop: () => (clearInterval(timer), worst) };
}

describe('the service survives its database', () => {
  test('another program holds the write lock: the run pauses at a checkpoint, the server answers at once throughout, and all is recorded after', async () => {
    const t = service('locked');
    const runId = await t.training();
    const other = new Database(t.db);
    other.exec('BEGIN IMMEDIATE'); // as a database browser does
    const lag = loopLag();
    const locked = `${t.db}: cannot record run ${runId} \\(database is locked\\); the run pauses at a checkpoint`;
    const stalled = await t.until((e) => e.type === 'run.status' && e.runId === runId && e.error !== null);
    expect(stalled).toMatchObject({ status: 'running', error: expect.stringMatching(new RegExp(`^${locked}$`)) });
    await t.until((e) => e.type === 'run.status' && e.runId === runId && e.status === 'paused');
    const shown = await t.call<{ run: { error: string } }>('runs.get', { id: runId });
    expect(shown.run.error).toMatch(new RegExp(`^${locked}$`));
    await sleep(1500);
    other.exec('ROLLBACK');
    other.close();
    await vi.waitFor(() => expect(t.s.store.run(runId)).toMatchObject({ status: 'paused', pid: null }), { timeout: 15_000 });
    const worst = lag.stop();
    console.log(`event loop: longest wait ${worst.toFixed(0)} ms while another connection held the write lock`);
    expect(worst).toBeLessThan(1000);
    const run = t.s.store.run(runId)!;
    expect(run.error).toMatch(new RegExp(`^${locked}$`));
    expect(t.s.store.checkpoints(runId).at(-1)!.step).toBe(run.step);
    expect(t.s.store.lastMetricStep(runId)).toBe(run.step);
    expect(t.events.filter((e) => e.type === 'run.metrics' && e.runId === runId).length).toBe(run.step);

    await t.call('runs.resume', { id: runId });
    await t.until((e) => e.type === 'run.metrics' && e.runId === runId && e.rows[0]!.step === run.step + 1);
    expect(t.s.store.run(runId)!.error).toBeNull();
    await t.call('runs.pause', { id: runId });
    await t.s.shutdown();
  });

  test('a database that refuses writes (read-only): the run pauses, the server stays up, and queued runs wait until it takes writes again', async () => {
    const t = service('read-only');
    const runId = await t.training();
    const datasetId = t.s.store.run(runId)!.datasetId!;
    const { runId: queued } = await t.call<{ runId: number }>('runs.create', { datasetId, config: tiny(1) });
    t.s.store.db.pragma('query_only = ON');
    const stalled = await t.until((e) => e.type === 'run.status' && e.runId === runId && e.error !== null);
    expect(stalled.type === 'run.status' && stalled.error).toMatch(
      new RegExp(`^${t.db}: cannot record run ${runId} \\(attempt to write a readonly database\\); the run pauses at a checkpoint$`),
    );
    await t.until((e) => e.type === 'run.status' && e.runId === runId && e.status === 'paused');
    await expect(t.call('runs.resume', { id: runId })).rejects.toMatchObject({ kind: 'conflict' });
    await sleep(500);
    expect(t.s.store.run(queued)!.status).toBe('queued');
    t.s.store.db.pragma('query_only = OFF');
    await t.until((e) => e.type === 'run.status' && e.runId === queued && e.status === 'running', 15_000);
    expect(t.s.store.run(runId)).toMatchObject({ status: 'paused', error: expect.stringMatching(/readonly database/) });
    expect(t.s.store.checkpoints(runId).at(-1)!.step).toBe(t.s.store.run(runId)!.step);
    await t.until((e) => e.type === 'run.status' && e.runId === queued && e.status === 'finished');
    await t.s.shutdown();
  });

  test('at start, checkpoint files the store does not know are recorded with the steps they carry; a damaged one is removed', async () => {
    const home = join(dir, 'reconcile');
    const store = new Store(join(home, 'localmim.db'));
    const { datasetId } = await indexFolder(store, await imageFolder('reconcile-images'));
    const prepared = prepare(store, home, { new: 'pretrain', datasetId, config: parseRunConfig(tiny(9)) }, backend.chosen);
    const job = {
      ...begin(store, prepared, { pid: process.pid, status: 'running', backend: backend.chosen }),
      cadence: {},
      previewEvery: 0,
    };
    const recorder = new RunRecorder(store, job.runId, 10);
    await runTrainJob({ ...job, stopAtStep: 4 }, { onEvent: (e) => recorder.handle(e), warn: () => undefined });
    const rows = store.checkpoints(job.runId);
    const runDir = dirname(rows[0]!.path);
    // As a server that died before recording them leaves it: step 2's row lost, step 4's row and the steps before it too.
    store.deleteCheckpoint(rows[1]!.id);
    store.deleteCheckpoint(rows[3]!.id);
    store.truncateMetrics(job.runId, 3);
    writeFileSync(join(runDir, 'ckpt-0000009.safetensors'), 'cut short');
    store.close();

    const s = new Service(home, () => launchNodeJob(), { keep: 10 });
    const after = s.store.checkpoints(job.runId);
    expect(after.map((c) => [c.step, c.hash])).toEqual(rows.map((c) => [c.step, c.hash]));
    expect(s.store.lastMetricStep(job.runId)).toBe(rows[3]!.step);
    expect(readdirSync(runDir).filter((n) => n.startsWith('ckpt-'))).toEqual(after.map((c) => c.path.slice(runDir.length + 1)));
    await s.shutdown();
  });
});

describe('bounded concurrency', () => {
  /** A service whose job processes are counted as they start and exit. */
  async function crowd(name: string, options: ConstructorParameters<typeof Service>[2]) {
    const counted = { live: 0, peak: 0, started: 0 };
    const s = new Service(
      join(dir, name),
      () => {
        const job = launchNodeJob();
        counted.started++;
        counted.peak = Math.max(counted.peak, ++counted.live);
        job.onExit(() => counted.live--);
        return job;
      },
      options,
    );
    const { datasetId } = await indexFolder(s.store, await imageFolder(`${name}-images`, 2));
    const config = parseRunConfig(tiny(1));
    const run = s.store.createRun({ name: 'analysed', datasetId, config, backend: 'wasm', status: 'finished', pid: null });
    const model = new LocalMIM(config.model, config.seed);
    const optimizer = new AdamW(model.params.vars, config.optim);
    const path = join(dir, name, 'runs', String(run.id), 'ckpt-0000001.safetensors');
    const written = await saveCheckpoint(path, model, optimizer, { step: 1, epoch: 1, loss: null, config });
    optimizer.dispose();
    model.dispose();
    s.store.addCheckpoint({ runId: run.id, step: 1, epoch: 1, loss: null, path, ...written });
    const analyse = () =>
      s.call('analysis.run', { runId: run.id, datasetId, path: 'img-0.png', query: 0 }) as Promise<{ layers: unknown[] }>;
    return { s, counted, analyse };
  }

  test('50 concurrent compute calls: never more job processes than slots, and every call answered', async () => {
    const { s, counted, analyse } = await crowd('crowd', {});
    const answers = await Promise.all(Array.from({ length: 50 }, analyse));
    expect(answers.every((a) => a.layers.length === tinyModel.depth)).toBe(true);
    expect(counted.started).toBe(50);
    expect(counted.peak).toBeLessThanOrEqual(jobSlots());
    await s.shutdown();
  }, 600_000);

  test('past the bound on waiting requests, a call is refused at once as busy (HTTP 429); the rest are answered', async () => {
    const { s, counted, analyse } = await crowd('crowd-busy', { jobs: 2, waiting: 3 });
    const results = await Promise.allSettled(Array.from({ length: 8 }, analyse));
    expect(results.map((r) => r.status)).toEqual([...Array(5).fill('fulfilled'), ...Array(3).fill('rejected')]);
    expect((results[7] as PromiseRejectedResult).reason).toMatchObject({
      kind: 'busy',
      message: 'busy: 2 jobs run and 3 requests wait for one; try again shortly',
    });
    expect(counted).toMatchObject({ peak: 2, started: 5 });
    await s.shutdown();
  });
});
