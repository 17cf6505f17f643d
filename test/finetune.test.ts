import { mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { isBackbone } from '../core/model/classifier.js';
import { SAMPLE_IMAGES } from '../core/home.js';
import { Store } from '../core/store/store.js';
import { loadCheckpoint } from '../core/train/checkpoint.js';
import { localmim } from './cli.js';

// A labeled folder: the sample crops, one class per source photograph (6 classes of 50).
const dir = mkdtempSync(join(tmpdir(), 'localmim-finetune-'));
const labeled = join(dir, 'labeled');
const home = join(dir, 'home');
const tiny = join(dir, 'tiny.json');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

type Event = { type: string; step?: number; top1?: number; loss?: number; runId?: number };
const events = (stdout: string) =>
  stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Event);

beforeAll(() => {
  for (const f of readdirSync(SAMPLE_IMAGES).filter((f) => f.endsWith('.jpg'))) {
    const cls = f.replace(/-\d+\.jpg$/, '');
    mkdirSync(join(labeled, cls), { recursive: true });
    symlinkSync(join(SAMPLE_IMAGES, f), join(labeled, cls, f));
  }
  writeFileSync(
    tiny,
    JSON.stringify({
      model: { D: 32, depth: 8, heads: 2, decoderDim: 16, decoderHeads: 2, imgSize: 32 },
      optim: { epochs: 1, batch: 16, warmupEpochs: 0.2, blr: 2e-3 },
    }),
  );
  const r = localmim(['pretrain', '--json', '--home', home, '--config', tiny]);
  expect(r.code, r.stderr).toBe(0);
});

test('fine-tuning a pretrained run reports top-1 each epoch, above chance, as a child run', () => {
  const r = localmim([
    'finetune',
    '--json',
    '--home',
    home,
    '--from',
    '1',
    '--data',
    labeled,
    '--epochs',
    '4',
    '--batch',
    '16',
    '--blr',
    '2e-3',
    '--warmup',
    '1',
  ]);
  expect(r.code, r.stderr).toBe(0);
  const evals = events(r.stdout).filter((e) => e.type === 'eval');
  expect(evals).toHaveLength(4);
  expect(evals.at(-1)!.top1!).toBeGreaterThan(0.4); // chance is 1/6
  const store = new Store(join(home, 'localmim.db'));
  const run = store.run(2)!;
  expect(run).toMatchObject({ kind: 'finetune', parentId: 1, status: 'finished' });
  expect(
    store
      .metrics(2)
      .filter((m) => m.valTop1 !== null)
      .map((m) => m.valTop1),
  ).toEqual(evals.map((e) => e.top1));
  const pos = (runId: number) => loadCheckpoint(store.checkpoints(runId).at(-1)!.path).tensors.get('pos_embed')!.values;
  expect(pos(2)).not.toEqual(pos(1)); // trained from the pretrained table
  store.close();
});

test('a linear probe trains the head only: the backbone stays the pretrained one', () => {
  const r = localmim([
    'finetune',
    '--json',
    '--home',
    home,
    '--from',
    '1',
    '--data',
    labeled,
    '--linear-probe',
    '--epochs',
    '1',
    '--batch',
    '16',
  ]);
  expect(r.code, r.stderr).toBe(0);
  const store = new Store(join(home, 'localmim.db'));
  const probe = loadCheckpoint(store.checkpoints(3).at(-1)!.path).tensors;
  const pretrained = loadCheckpoint(store.checkpoints(1).at(-1)!.path).tensors;
  store.close();
  for (const [name, t] of probe) if (isBackbone(name)) expect(t.values, name).toEqual(pretrained.get(name)!.values);
  expect(probe.has('head.weight')).toBe(true);
});

test('from scratch (the baseline), and bad requests named clearly', () => {
  const r = localmim([
    'finetune',
    '--json',
    '--home',
    home,
    '--scratch',
    '--img',
    '32',
    '--data',
    labeled,
    '--epochs',
    '1',
    '--batch',
    '16',
  ]);
  expect(r.code, r.stderr).toBe(0);
  expect(events(r.stdout).filter((e) => e.type === 'eval')).toHaveLength(1);
  expect(localmim(['finetune', '--home', home, '--from', '9', '--data', labeled]).stderr).toMatch(/no run 9/);
  expect(localmim(['finetune', '--home', home, '--from', '1', '--data', SAMPLE_IMAGES]).stderr).toMatch(/at least two class sub-folders/);
});
