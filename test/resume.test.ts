import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { launchNodeJob } from '../core/jobs/launch.js';
import { specOf } from '../core/runs/spec.js';
import { Service } from '../core/service/service.js';
import { Store } from '../core/store/store.js';
import { lrAt } from '../core/train/schedule.js';
import { localmim, localmimAsync } from './support/cli.js';

const dir = mkdtempSync(join(tmpdir(), 'localmim-resume-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// 37 steps of 8 sample images per epoch; a step takes a fraction of a second.
const tinyModel = { D: 32, depth: 8, heads: 2, decoderDim: 16, decoderHeads: 2, imgSize: 32, patchSize: 8 };
const tinyFile = join(dir, 'tiny.json');
writeFileSync(tinyFile, JSON.stringify({ model: tinyModel, optim: { epochs: 1, batch: 8, warmupEpochs: 0.3, blr: 2e-3 }, seed: 3 }));

type Event = { type: string; step: number; lr: number; loss: number; message?: string };
const events = (stdout: string) =>
  stdout
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Event);
const ofType = (stdout: string, type: string) => events(stdout).filter((e) => e.type === type);

function inStore<T>(home: string, read: (s: Store) => T): T {
  const store = new Store(join(home, 'localmim.db'));
  try {
    return read(store);
  } finally {
    store.close();
  }
}

describe('resume from any checkpoint, with a new schedule', () => {
  const home = join(dir, 'older');

  test('--resume 1:4 continues from step 4: the later checkpoints and history are set aside, and plain resume does not return to them', async () => {
    const first = await localmimAsync([
      'pretrain',
      '--json',
      '--home',
      home,
      '--config',
      tinyFile,
      '--checkpoint-every',
      '4',
      '--max-steps',
      '12',
    ]);
    expect(first.code, first.stderr).toBe(0);
    const original = new Map(ofType(first.stdout, 'step').map((e) => [e.step, e.loss]));

    const r = await localmimAsync(['pretrain', '--json', '--home', home, '--resume', '1:4', '--max-steps', '6']);
    expect(r.code, r.stderr).toBe(0);
    expect(ofType(r.stdout, 'start')[0]).toMatchObject({ step: 4 });
    const steps = ofType(r.stdout, 'step');
    expect(steps.map((e) => e.step)).toEqual([5, 6]);
    for (const e of steps) expect(e.loss).toBeCloseTo(original.get(e.step)!, 4); // an exact resume of step 4

    const folder = join(home, 'runs', '1', 'superseded-1');
    const { checkpoints, metrics, resumes } = inStore(home, (s) => ({
      checkpoints: s.checkpoints(1).map((c) => c.step),
      metrics: s.metrics(1).map((m) => m.step),
      resumes: s.resumes(1),
    }));
    expect(checkpoints).toEqual([4, 6]);
    expect(metrics).toEqual([1, 2, 3, 4, 5, 6]);
    expect(resumes).toMatchObject([{ fromStep: 4, changes: {}, superseded: [8, 12], folder }]);
    expect(existsSync(join(folder, 'ckpt-0000008.safetensors')) && existsSync(join(folder, 'ckpt-0000012.safetensors'))).toBe(true);
    const aside = readFileSync(join(folder, 'metrics.jsonl'), 'utf8').trim().split('\n');
    expect(aside.map((l) => (JSON.parse(l) as { step: number }).step)).toEqual([5, 6, 7, 8, 9, 10, 11, 12]);
    expect(localmim(['runs', 'show', '1', '--home', home]).stdout).toContain(
      `resumed at step 4 (${resumes[0]!.time}): checkpoints 8, 12 and the history after step 4 set aside in ${folder}`,
    );

    const again = await localmimAsync(['pretrain', '--json', '--home', home, '--resume', '1', '--max-steps', '7']);
    expect(again.code, again.stderr).toBe(0);
    expect(ofType(again.stdout, 'start')[0]).toMatchObject({ step: 6 });
  });

  test('--resume 1 --lr 1e-5 trains on at the new learning rate, recorded in the run and its history', async () => {
    const r = await localmimAsync([
      'pretrain',
      '--json',
      '--home',
      home,
      '--resume',
      '1',
      '--lr',
      '1e-5',
      '--min-lr',
      '1e-7',
      '--max-steps',
      '9',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const { optim, resumes } = inStore(home, (s) => {
      const spec = specOf(s.run(1)!);
      return { optim: spec.kind === 'pretrain' ? spec.config.optim : undefined, resumes: s.resumes(1) };
    });
    expect(optim).toMatchObject({ lr: 1e-5, minLr: 1e-7, blr: 2e-3, batch: 8 });
    const steps = ofType(r.stdout, 'step');
    expect(steps.map((e) => e.step)).toEqual([8, 9]);
    for (const e of steps) {
      expect(e.lr).toBeCloseTo(lrAt((e.step - 1) / 37, optim!), 12);
      expect(e.lr).toBeLessThanOrEqual(1e-5);
    }
    expect(resumes.at(-1)).toMatchObject({ fromStep: 7, changes: { lr: [null, 1e-5], minLr: [1e-6, 1e-7] }, superseded: [], folder: null });
  });

  test('flags a resumed run cannot change are refused naming the flag, and nothing changes', () => {
    const before = inStore(home, (s) => ({ run: s.run(1), resumes: s.resumes(1).length }));
    const cases: [string[], RegExp][] = [
      [
        ['--batch', '4'],
        /^localmim pretrain: --batch: a resumed run keeps it.*only --epochs, --blr, --lr, --min-lr, --warmup and the checkpoint flags/m,
      ],
      [['--seed', '1'], /--seed: a resumed run keeps it/],
      [['--lr', '1e-4', '--blr', '1e-4'], /--lr: give --lr or --blr, not both/],
      [['--min-lr=-1'], /--min-lr: expected a number ≥ 0, got "-1"/],
    ];
    for (const [flags, message] of cases) {
      const r = localmim(['pretrain', '--home', home, '--resume', '1', ...flags]);
      expect(r.code, flags.join(' ')).not.toBe(0);
      expect(r.stderr).toMatch(message);
    }
    const missing = localmim(['pretrain', '--home', home, '--resume', '1:5']);
    expect(missing.stderr).toMatch(/run 1 has no checkpoint at step 5 \(it has: ([\d, ]+)\)/);
    expect(inStore(home, (s) => ({ run: s.run(1), resumes: s.resumes(1).length }))).toEqual(before);
  });

  test('the API resumes from a step with new settings; fields it cannot change are refused by name', async () => {
    const s = new Service(home, () => launchNodeJob());
    try {
      await expect(s.call('runs.resume', { id: 1, batch: 4 })).rejects.toThrow(/runs\.resume: batch: unknown field/);
      await expect(s.call('runs.resume', { id: 1, blr: 1e-4, lr: 1e-4 })).rejects.toThrow(/lr: give lr or blr, not both/);
      await expect(s.call('runs.resume', { id: 1, step: 5 })).rejects.toThrow(/run 1 has no checkpoint at step 5/);
      const ended = new Promise<void>((resolve) => s.subscribe((e) => e.type === 'run.status' && e.status === 'finished' && resolve()));
      await s.call('runs.resume', { id: 1, step: 6, blr: 1e-4, epochs: 2, checkpointEvery: 20 });
      await ended;
      const run = s.store.run(1)!;
      const spec = specOf(run);
      const optim = spec.kind === 'pretrain' ? spec.config.optim : undefined;
      expect(optim).toMatchObject({ blr: 1e-4, epochs: 2, minLr: 1e-7 });
      expect(optim!.lr).toBeUndefined();
      expect(s.store.checkpoints(1).map((c) => c.step)).toEqual(expect.arrayContaining([60, 74]));
      expect(s.store.resumes(1).at(-1)).toMatchObject({
        fromStep: 6,
        changes: { blr: [2e-3, 1e-4], lr: [1e-5, null], epochs: [1, 2], everySteps: [null, 20] },
        superseded: [7, 9],
      });
      const m = s.store.metrics(1).find((x) => x.step === 7)!;
      expect(m.lr).toBeCloseTo(lrAt(6 / 37, optim!), 12);
      await expect(s.call('runs.resume', { id: 1, epochs: 2 })).rejects.toThrow(
        /epochs: run 1 continues from epoch 2 \(step 74\); give more epochs than that/,
      );
    } finally {
      await s.shutdown();
    }
  });
});

describe('a NaN or a divergence stops the run, naming the command that resumes at a lower lr', () => {
  test('with no checkpoint yet: it says so and how to start over; nothing is checkpointed', () => {
    const home = join(dir, 'nan');
    const r = localmim(['pretrain', '--json', '--home', home, '--config', tinyFile, '--lr', '1e4', '--warmup', '0', '--max-steps', '10']);
    expect(r.code).toBe(1);
    expect(ofType(r.stdout, 'checkpoint')).toEqual([]);
    const message = ofType(r.stdout, 'error')[0]!.message!;
    expect(message).toMatch(
      /^loss (is not finite|diverged) at optimizer step \d+ .*; stopped without saving\. The run has no checkpoint yet: start it over from step 0 at a lower learning rate with localmim pretrain --resume 1 --lr 1000$/,
    );
    expect(message).not.toMatch(/intact/);
    expect(inStore(home, (s) => s.checkpoints(1))).toEqual([]);
  });

  test('after a checkpoint: it names that checkpoint, none holds the diverged weights, and the command it names trains on', () => {
    const home = join(dir, 'diverged');
    const r = localmim([
      'pretrain',
      '--json',
      '--home',
      home,
      '--config',
      tinyFile,
      '--lr',
      '300',
      '--warmup',
      '0.5',
      '--checkpoint-every',
      '5',
    ]);
    expect(r.code).toBe(1);
    const saved = ofType(r.stdout, 'checkpoint').map((e) => e.step);
    const last = saved.at(-1)!;
    expect(last).toBeGreaterThan(0);
    const message = ofType(r.stdout, 'error')[0]!.message!;
    const stop = Number(/optimizer step (\d+)/.exec(message)![1]);
    expect(last).toBeLessThanOrEqual(stop);
    expect(message).toMatch(
      new RegExp(
        `; stopped without saving\\. Resume from the last good checkpoint \\(step ${last}\\) at a lower learning rate: localmim pretrain --resume 1:${last} --lr 30$`,
      ),
    );
    expect(inStore(home, (s) => s.checkpoints(1).map((c) => c.step)).at(-1)).toBe(last);

    const command = /localmim pretrain (--resume .*)$/.exec(message)![1]!.split(' ');
    const resumed = localmim(['pretrain', '--json', '--home', home, ...command, '--max-steps', String(last + 1)]);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(ofType(resumed.stdout, 'step').map((e) => [e.step, e.lr <= 30])).toEqual([[last + 1, true]]);
  });
});
