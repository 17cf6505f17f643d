import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { isBackbone } from '../core/model/classifier.js';
import { SAMPLE_IMAGES } from '../core/home.js';
import { Store } from '../core/store/store.js';
import { decodeSafetensors } from '../core/safetensors.js';
import { loadCheckpoint } from '../core/train/checkpoint.js';
import { localmim } from './support/cli.js';

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
    '--recipe',
    'official',
    '--no-baselines',
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

test("a linear probe (MAE's protocol) trains its head on the frozen backbone and reports top-1 each epoch", () => {
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
    '--probe-recipe',
    'lars',
    '--epochs',
    '3',
    '--warmup',
    '1',
    '--batch',
    '16',
    // MAE's absolute rate (its blr 0.1 at batch 16384 is lr 6.4): LARS moves the head by lr·0.001 of its norm a step.
    '--blr',
    '100',
  ]);
  expect(r.code, r.stderr).toBe(0);
  const all = events(r.stdout) as (Event & { config?: { finetune: Record<string, unknown> } })[];
  const start = all.find((e) => e.type === 'start')!;
  expect(start.config!.finetune).toMatchObject({ linearProbe: true, probeRecipe: 'lars', minLr: 0, weightDecay: 0, smoothing: 0 });
  const evals = all.filter((e) => e.type === 'eval');
  expect(evals).toHaveLength(3);
  expect(evals.at(-1)!.top1!).toBeGreaterThan(0.4); // chance is 1/6
  const losses = all.filter((e) => e.type === 'step').map((e) => e.loss!);
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  expect(mean(losses.slice(-15))).toBeLessThan(mean(losses.slice(0, 15)));

  const store = new Store(join(home, 'localmim.db'));
  const probe = loadCheckpoint(store.checkpoints(start.runId!).at(-1)!.path).tensors;
  const pretrained = loadCheckpoint(store.checkpoints(1).at(-1)!.path).tensors;
  store.close();
  for (const [name, t] of probe) if (isBackbone(name)) expect(t.values, name).toEqual(pretrained.get(name)!.values);
  expect([...probe.get('fc_norm.weight')!.values].every((v) => v === 1)).toBe(true); // MAE's global-pool probe leaves fc_norm as initialised
  expect([...probe.get('head.0.running_mean')!.values].some((v) => v !== 0)).toBe(true);
  expect([...probe.keys()].filter((n) => n.startsWith('optimizer.')).every((n) => n.startsWith('optimizer.mu.head.1.'))).toBe(true);

  // Its export is timm's plain head, BatchNorm folded in.
  const out = join(dir, 'probe-export');
  expect(localmim(['export', String(start.runId), '--home', home, '--out', out]).code).toBe(0);
  const names = [...decodeSafetensors(readFileSync(join(out, 'model.safetensors')), out).tensors.keys()];
  expect(names.filter((n) => n.startsWith('head'))).toEqual(expect.arrayContaining(['head.weight', 'head.bias']));
  expect(names.filter((n) => n.startsWith('head.0') || n.startsWith('head.1'))).toEqual([]);
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
    '--recipe',
    'official',
    '--no-baselines',
  ]);
  expect(r.code, r.stderr).toBe(0);
  expect(events(r.stdout).filter((e) => e.type === 'eval')).toHaveLength(1);
  expect(localmim(['finetune', '--home', home, '--from', '9', '--data', labeled]).stderr).toMatch(/no run 9/);
  expect(localmim(['finetune', '--home', home, '--from', '1', '--data', SAMPLE_IMAGES]).stderr).toMatch(/at least two class sub-folders/);
});
