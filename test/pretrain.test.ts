import Database from 'better-sqlite3';
import { spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, test } from 'vitest';
import { SAMPLE_IMAGES } from '../core/home.js';
import { Store } from '../core/store/store.js';
import { loadCheckpoint } from '../core/train/checkpoint.js';
import { localmim, localmimAsync } from './support/cli.js';

const BIN = fileURLToPath(new URL('../bin/localmim.js', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'localmim-pretrain-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// A small model so that a whole run on the sample images takes seconds; 37 steps of 8 images per epoch.
const config = join(dir, 'tiny.json');
writeFileSync(
  config,
  JSON.stringify({
    model: { D: 32, depth: 8, heads: 2, decoderDim: 16, decoderHeads: 2, imgSize: 32 },
    optim: { epochs: 1, batch: 8, warmupEpochs: 0.3, blr: 2e-3 },
    seed: 7,
  }),
);
const args = (home: string) => ['pretrain', '--json', '--home', home, '--config', config, '--checkpoint-every', '4'];

type Event = { type: string; step?: number; loss?: number; path?: string; runId?: number; message?: string };

/** Starts a pretraining process; resolves with its events, killing it with SIGKILL after `killAfterSteps` steps. */
function runUntil(
  cliArgs: string[],
  killAfterSteps?: number,
  delayMs = 0,
): Promise<{ events: Event[]; killed: boolean; code: number | null }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...cliArgs], { stdio: ['ignore', 'pipe', 'pipe'] });
    const events: Event[] = [];
    let killed = false;
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    createInterface({ input: child.stdout }).on('line', (l) => {
      const e = JSON.parse(l) as Event;
      events.push(e);
      if (
        !killed &&
        killAfterSteps !== undefined &&
        e.type === 'step' &&
        events.filter((x) => x.type === 'step').length === killAfterSteps
      ) {
        killed = true;
        setTimeout(() => child.kill('SIGKILL'), delayMs);
      }
    });
    child.on('close', (code) => {
      if (!killed && code !== 0) events.push({ type: 'stderr', message: stderr });
      resolve({ events, killed, code });
    });
  });
}

function checkStore(home: string) {
  const db = new Database(join(home, 'localmim.db'), { readonly: true });
  expect(db.pragma('integrity_check', { simple: true })).toBe('ok');
  db.close();
  const store = new Store(join(home, 'localmim.db'));
  for (const c of store.checkpoints(1)) expect(loadCheckpoint(c.path).hash).toBe(c.hash);
  const losses = store.metrics(1).map((m) => [m.step, m.loss] as const);
  const run = store.run(1)!;
  store.close();
  return { losses, run };
}

describe('localmim pretrain', () => {
  const reference = join(dir, 'reference');

  test('a short real run on the sample images: events, metrics, checkpoints', async () => {
    const { events, code } = await runUntil(args(reference));
    expect(code, JSON.stringify(events.at(-1))).toBe(0);
    const start = events.find((e) => e.type === 'start') as Event & { backend: string; totalSteps: number };
    expect(start).toMatchObject({ runId: 1, totalSteps: 37 });
    expect(start.backend).toBeTruthy();
    const steps = events.filter((e) => e.type === 'step');
    expect(steps.map((e) => e.step)).toEqual(Array.from({ length: 37 }, (_, i) => i + 1));
    expect(events.filter((e) => e.type === 'checkpoint').map((e) => e.step)).toEqual([4, 8, 12, 16, 20, 24, 28, 32, 36, 37]);
    expect(events.at(-1)).toMatchObject({ type: 'end', step: 37 });
    const { losses, run } = checkStore(reference);
    expect(run.status).toBe('finished');
    expect(losses.map(([, l]) => l)).toEqual(steps.map((e) => e.loss));
    expect(localmim(['runs', '--home', reference]).stdout).toMatch(/^1 +finished +37 /m);
  });

  test('killed with SIGKILL at arbitrary moments, it resumes and reproduces the uninterrupted losses', async () => {
    const home = join(dir, 'killed');
    const kills: [number, number][] = [
      [6, 0],
      [3, 40],
      [9, 5],
    ];
    let r = await runUntil(args(home), ...kills[0]!);
    expect(r.killed).toBe(true);
    for (const kill of [...kills.slice(1), undefined]) {
      const state = checkStore(home);
      expect(['running', 'interrupted']).toContain(state.run.status);
      r = await runUntil(['pretrain', '--json', '--home', home, '--resume', '1', '--checkpoint-every', '4'], ...(kill ?? []));
      if (!kill) expect(r.code, JSON.stringify(r.events.at(-1))).toBe(0);
    }
    const resumed = checkStore(home);
    expect(resumed.run.status).toBe('finished');
    const expected = checkStore(reference).losses;
    expect(resumed.losses.map(([s]) => s)).toEqual(expected.map(([s]) => s));
    resumed.losses.forEach(([step, loss], i) =>
      expect(Math.abs(loss - expected[i]![1]), `step ${step}`).toBeLessThan(1e-6 * expected[i]![1]),
    );
  });

  test('a checkpoint renamed into place but never recorded (killed in between) is the one resume takes, with the steps it carries: no gap', async () => {
    const home = join(dir, 'unrecorded');
    expect((await runUntil([...args(home), '--max-steps', '8'])).code).toBe(0);
    const store = new Store(join(home, 'localmim.db'));
    store.deleteCheckpoint(store.checkpoints(1).find((c) => c.step === 8)!.id); // its file stays, as after such a kill
    store.truncateMetrics(1, 4); // steps 5-8 were still waiting to be written
    store.close();
    const r = await runUntil(['pretrain', '--json', '--home', home, '--resume', '1', '--checkpoint-every', '4']);
    expect(r.code, JSON.stringify(r.events.at(-1))).toBe(0);
    expect(r.events[0]).toMatchObject({ type: 'start', step: 8 });
    expect(checkStore(home).losses).toEqual(checkStore(reference).losses);
  });

  test('the write-ahead log lost: resume finds the checkpoints on disk, runs show marks what is gone, pruning takes the unrecorded', async () => {
    const home = join(dir, 'wal-lost');
    expect((await runUntil([...args(home), '--max-steps', '4'])).code).toBe(0);
    const db = join(home, 'localmim.db');
    copyFileSync(db, `${db}.then`); // the database as its last WAL checkpoint left it: run 1 at step 4
    expect(
      (await runUntil(['pretrain', '--json', '--home', home, '--resume', '1', '--checkpoint-every', '4', '--max-steps', '16'])).code,
    ).toBe(0);
    for (const f of [`${db}-wal`, `${db}-shm`]) rmSync(f, { force: true });
    renameSync(`${db}.then`, db);
    const runDir = join(home, 'runs', '1');
    const ckpt4 = join(runDir, 'ckpt-0000004.safetensors');
    rmSync(ckpt4, { force: true }); // pruned after the log was lost, or deleted by hand

    const shown = JSON.parse(localmim(['runs', 'show', '1', '--json', '--home', home]).stdout) as {
      checkpoints: { step: number; file: string }[];
    };
    expect(shown.checkpoints.map((c) => [c.step, c.file])).toEqual([
      [4, 'missing'],
      [8, 'unrecorded'],
      [12, 'unrecorded'],
      [16, 'unrecorded'],
    ]);
    expect(localmim(['runs', 'show', '1', '--home', home]).stdout).toContain(`${ckpt4}  [missing]`);

    const r = await runUntil(['pretrain', '--json', '--home', home, '--resume', '1', '--checkpoint-every', '4']);
    expect(r.code, JSON.stringify(r.events.at(-1))).toBe(0);
    expect(r.events[0]).toMatchObject({ type: 'start', step: 16 });
    const recorded = new Store(db);
    const rows = recorded.checkpoints(1);
    recorded.close();
    expect(rows.length).toBeLessThanOrEqual(4); // keep 3, and the best
    expect(
      readdirSync(runDir)
        .filter((n) => n.endsWith('.safetensors'))
        .sort(),
    ).toEqual(rows.map((c) => basename(c.path)).sort());
    expect(checkStore(home).losses).toEqual(checkStore(reference).losses);
  });

  test('a database lost beside its run folders: the runs come back from their checkpoints, and no new run takes their folders', async () => {
    const home = join(dir, 'db-lost');
    expect((await runUntil([...args(home), '--max-steps', '8'])).code).toBe(0);
    for (const f of ['localmim.db', 'localmim.db-wal', 'localmim.db-shm']) rmSync(join(home, f), { force: true });
    mkdirSync(join(home, 'runs', '7'), { recursive: true });
    writeFileSync(join(home, 'runs', '7', 'ckpt-0000004.safetensors'), 'not a checkpoint');

    const listed = localmim(['runs', '--home', home]);
    expect(listed.stderr).toContain(`run 1: recovered from 2 checkpoint(s) in ${join(home, 'runs', '1')}, up to step 8`);
    expect(listed.stderr).toContain(`${join(home, 'runs', '7')}: a run folder the database has no record of, with no readable checkpoint`);
    expect(listed.stdout).toMatch(/^1 +interrupted +8 /m);

    const r = await runUntil(['pretrain', '--json', '--home', home, '--resume', '1', '--data', SAMPLE_IMAGES, '--checkpoint-every', '4']);
    expect(r.code, JSON.stringify(r.events.at(-1))).toBe(0);
    expect(r.events[0]).toMatchObject({ type: 'start', step: 8 });
    expect(checkStore(home).losses).toEqual(checkStore(reference).losses);

    const fresh = await runUntil([...args(home), '--max-steps', '1']);
    expect(fresh.events[0]).toMatchObject({ type: 'start', runId: 8 });
    expect(readdirSync(join(home, 'runs', '7'))).toEqual(['ckpt-0000004.safetensors']);
  });

  test('bad flags name the field', async () => {
    const r = localmim(['pretrain', '--home', join(dir, 'bad'), '--img', '60']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/model\.imgSize: imgSize=60 must be a multiple of patchSize=8/);
    expect(localmim(['pretrain', '--home', join(dir, 'bad'), '--preset', 'simclr']).stderr).toMatch(/--preset: unknown preset "simclr"/);
    // Integer flags take decimal digits only, whatever Number() makes of the rest.
    for (const [flag, value, message] of [
      ['--batch', '0x10', /--batch: expected a non-negative integer, got "0x10"/],
      ['--keep', '1e1', /--keep: expected a positive integer, got "1e1"/],
      ['--lr', '0x10', /--lr: expected a number, got "0x10"/],
    ] as const) {
      const r = await localmimAsync(['pretrain', '--home', join(dir, 'bad'), '--max-steps', '1', flag, value]); // one step if taken
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(message);
    }
    // With --json every failing exit ends the event stream with an error event, whatever failed and wherever.
    for (const [more, message] of [
      [['--batch', '0x10'], '--batch: expected a non-negative integer, got "0x10"'],
      [['--resume', '99'], 'no run 99'],
    ] as const) {
      const r = await localmimAsync(['pretrain', '--json', '--home', join(dir, 'bad'), '--max-steps', '1', ...more]);
      expect(r.code).not.toBe(0);
      expect(
        r.stdout
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l) as unknown),
      ).toEqual([{ type: 'error', runId: null, message }]);
    }
  });
});

describe('the paper’s ablation configurations train (one step each)', () => {
  // One tiny model at 32 px (patch 8, 4×4 grid) and 4 blocks tapped at [0, 1, 2, 3] unless global.
  const model = { D: 32, depth: 4, heads: 2, decoderDim: 16, decoderHeads: 2, imgSize: 32, patchSize: 8 };
  test.each([
    ['Table 6 global multi-scale', { variant: 'global', scales: [4, 2, 1, 0.5] }],
    ['Table 4f coarse-to-fine', { taps: [0, 1, 2, 3], scales: [0.5, 1, 2, 4] }],
    ['Table 4f single-scale', { taps: [0, 1, 2, 3], scales: [1, 1, 1, 1] }],
    ['Table 4f fine-to-coarse [28², 14², 7², 7²]', { taps: [0, 1, 2, 3], scales: [2, 1, 0.5, 0.5] }],
  ] as const)('%s', (name, layout) => {
    const home = join(dir, name.replace(/\W+/g, '-'));
    const file = join(dir, `${name.replace(/\W+/g, '-')}.json`);
    writeFileSync(file, JSON.stringify({ model: { ...model, ...layout }, optim: { epochs: 1, batch: 8 } }));
    const r = localmim(['pretrain', '--json', '--home', home, '--config', file, '--max-steps', '1']);
    expect(r.code, r.stderr).toBe(0);
    const events = r.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Event & { losses?: number[] });
    const step = events.find((e) => e.type === 'step')!;
    expect(step.losses).toHaveLength(4);
    expect(step.losses!.every((l) => Number.isFinite(l) && l > 0)).toBe(true);
    // Decoder k carries scale k's head: its final 1×1 conv (official index, input width d/4, d/2, d, d) → 27 HOG features.
    const { tensors } = loadCheckpoint(events.find((e) => e.type === 'checkpoint')!.path!);
    const head = { 4: [4, 4], 2: [1, 8], 1: [0, 16], 0.5: [1, 16] } as const;
    layout.scales.forEach((s, k) => expect(tensors.get(`decoder.${k}.pred.${head[s][0]}.weight`)?.shape).toEqual([27, head[s][1], 1, 1]));
    expect([...tensors.keys()].filter((n) => /^norm\.\d+\.weight$/.test(n))).toHaveLength(4);
  });
});
