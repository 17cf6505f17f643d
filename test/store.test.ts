import Database from 'better-sqlite3';
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, test } from 'vitest';
import { DatabaseFromTheFutureError, latestVersion, openDatabase } from '../core/store/db.js';
import { Store } from '../core/store/store.js';

const dir = mkdtempSync(join(tmpdir(), 'localmim-store-'));
let n = 0;
const fresh = () => join(dir, `db-${n++}.sqlite`);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

test('a new database gets WAL, foreign keys and every migration', () => {
  const db = openDatabase(fresh());
  expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
  expect(db.pragma('foreign_keys', { simple: true })).toBe(1);
  expect(db.pragma('user_version', { simple: true })).toBe(latestVersion());
  const tables = (db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name`).all() as { name: string }[]).map(
    (t) => t.name,
  );
  expect(tables).toEqual(['checkpoints', 'datasets', 'exports', 'images', 'knn', 'metrics', 'resumes', 'runs']);
  expect((db.prepare('PRAGMA table_info(runs)').all() as { name: string }[]).map((c) => c.name)).toContain('parent_id');
  db.close();
});

test('migration 20 keeps the runs and metrics of a version-10 database', () => {
  const path = fresh();
  const old = openDatabase(path, 10);
  old.prepare(`INSERT INTO runs (name, config, backend, status) VALUES ('old', '{}', 'wasm', 'finished')`).run();
  old
    .prepare(`INSERT INTO metrics (run_id, step, epoch, samples, loss, losses, lr, images_per_s) VALUES (1, 1, 0.1, 8, 0.5, '[]', 1e-4, 3)`)
    .run();
  old.close();
  const store = new Store(path);
  expect(store.run(1)).toMatchObject({ name: 'old', kind: 'pretrain', parentId: null });
  expect(store.metrics(1)[0]).toMatchObject({ step: 1, valTop1: null });
  store.close();
});

test('migration 42: linear probes recorded before the logistic probe keep MAE’s LARS recipe; fine-tunes are untouched', () => {
  const path = fresh();
  const old = openDatabase(path, 41);
  const insert = old.prepare(`INSERT INTO runs (name, config, backend, status, kind) VALUES (?, ?, 'wasm', 'finished', ?)`);
  insert.run('probe', JSON.stringify({ finetune: { linearProbe: true, epochs: 90 } }), 'finetune');
  insert.run('tune', JSON.stringify({ finetune: { linearProbe: false } }), 'finetune');
  old.prepare(`INSERT INTO knn (run_id, step, top1, top5, seconds) VALUES (1, 0, 0.5, 0.9, 1)`).run();
  old.close();
  const store = new Store(path);
  expect(store.run(1)!.config).toEqual({ finetune: { linearProbe: true, epochs: 90, probeRecipe: 'lars' } });
  expect(store.run(2)!.config).toEqual({ finetune: { linearProbe: false } });
  expect(store.run(1)!.probeResult).toBeNull();
  expect(store.knn(1)).toEqual([{ step: 0, top1: 0.5, top5: 0.9, seconds: 1, probeTop1: null }]);
  store.close();
});

test('a database from a newer version of the app is refused, untouched', () => {
  const path = fresh();
  const raw = new Database(path);
  raw.pragma(`user_version = ${latestVersion() + 10}`);
  raw.close();
  expect(() => openDatabase(path)).toThrow(DatabaseFromTheFutureError);
  expect(new Database(path).pragma('user_version', { simple: true })).toBe(latestVersion() + 10);
});

test('runs, metrics and checkpoints round-trip; deleting a run cascades', () => {
  const store = new Store(fresh());
  const ds = store.ensureDataset('/data/photos', 'photos');
  const run = store.createRun({ name: 'r', datasetId: ds.id, config: { a: 1 }, backend: 'wasm' });
  expect(run).toMatchObject({ status: 'running', pid: process.pid, config: { a: 1 }, tags: [] });
  store.addMetrics(
    run.id,
    [1, 2, 3].map((step) => ({
      step,
      epoch: step / 10,
      samples: step * 8,
      loss: 1 / step,
      losses: [0.5 / step, 0.5 / step],
      lr: 1e-4,
      imagesPerS: 5,
    })),
  );
  store.truncateMetrics(run.id, 2);
  expect(store.metrics(run.id).map((m) => [m.step, m.losses])).toEqual([
    [1, [0.5, 0.5]],
    [2, [0.25, 0.25]],
  ]);
  store.addCheckpoint({ runId: run.id, step: 2, epoch: 0.2, loss: 0.5, path: '/x', size: 1, hash: 'h' });
  store.updateRun(run.id, { status: 'paused', tags: ['hog'], notes: 'first try' });
  expect(store.run(run.id)).toMatchObject({ status: 'paused', tags: ['hog'], notes: 'first try' });
  expect(store.run(run.id)!.finishedAt).toBeTruthy();
  store.db.prepare('DELETE FROM runs WHERE id = ?').run(run.id);
  expect(store.metrics(run.id)).toEqual([]);
  expect(store.checkpoints(run.id)).toEqual([]);
  store.close();
});

test("each run's last metric row in one query, as the full history ends; a run's exports, oldest first", () => {
  const store = new Store(fresh());
  const [a, b, none] = ['a', 'b', 'none'].map((name) => store.createRun({ name, datasetId: null, config: {}, backend: 'wasm' }).id);
  const row = (step: number) => ({ step, epoch: step / 10, samples: step * 8, loss: 1 / step, losses: [step], lr: 1e-4, imagesPerS: 5 });
  store.addMetrics(a!, [1, 2, 3].map(row));
  store.addMetrics(b!, [1, 7].map(row));
  store.setEval(b!, 7, 0.5, 0.25);
  const last = store.lastMetrics();
  for (const id of [a!, b!]) expect(last.get(id)).toEqual(store.metrics(id).at(-1));
  expect(last.get(b!)).toMatchObject({ step: 7, valTop1: 0.5 });
  expect(last.has(none!)).toBe(false);
  store.addExport(a!, 'safetensors', '/e/1');
  store.addExport(a!, 'tfjs', '/e/2');
  expect(store.exports(a!).map((x) => [x.format, x.path])).toEqual([
    ['safetensors', '/e/1'],
    ['tfjs', '/e/2'],
  ]);
  expect(store.exports(b!)).toEqual([]);
  store.close();
});

test('a run left running by a dead process is marked interrupted', () => {
  const store = new Store(fresh());
  const run = store.createRun({ name: 'r', datasetId: null, config: {}, backend: 'wasm' });
  store.markInterrupted(() => true);
  expect(store.run(run.id)!.status).toBe('running');
  store.markInterrupted(() => false);
  expect(store.run(run.id)!.status).toBe('interrupted');
  expect(store.run(run.id)!.error).toBe(
    `interrupted: its process ${process.pid} stopped at ${run.updatedAt} (a crash or kill); resume with localmim pretrain --resume ${run.id} (in the app: Resume), from its last checkpoint`,
  );
  store.close();
});

test('status values are checked by the schema', () => {
  const store = new Store(fresh());
  const run = store.createRun({ name: 'r', datasetId: null, config: {}, backend: 'wasm' });
  expect(() => store.updateRun(run.id, { status: 'exploded' as 'failed' })).toThrow(/CHECK constraint failed/);
  store.close();
});

test('a file that is not a database is refused, naming it and what to do', () => {
  const path = fresh();
  writeFileSync(path, Buffer.from('not SQLite at all '.repeat(300)));
  expect(() => new Store(path)).toThrow(`${path}: cannot open the database (file is not a database): restore it from a backup`);
});

test('an empty database file beside run folders is refused; in a new home it is a new database', () => {
  const home = join(dir, 'truncated-home');
  mkdirSync(join(home, 'runs', '3'), { recursive: true });
  writeFileSync(join(home, 'localmim.db'), '');
  expect(() => new Store(join(home, 'localmim.db'))).toThrow(
    `${join(home, 'localmim.db')}: the database file is empty but ${join(home, 'runs')} holds 1 run folder:`,
  );
  expect(statSync(join(home, 'localmim.db')).size).toBe(0);
  const newHome = join(dir, 'empty-new-home');
  mkdirSync(newHome);
  writeFileSync(join(newHome, 'localmim.db'), '');
  const store = new Store(join(newHome, 'localmim.db'));
  expect(store.runs()).toEqual([]);
  store.close();
});

test('a data folder that cannot be created is named', () => {
  writeFileSync(join(dir, 'a-file'), '');
  const folder = join(dir, 'a-file', 'home');
  expect(() => new Store(join(folder, 'localmim.db'))).toThrow(`${folder}: cannot create the data folder`);
});
