import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import {
  fitLinearProbe,
  holdoutSplit,
  PROBE_GRID,
  probeLogits,
  probeTop1,
  type Embedded,
  type LinearHead,
} from '../core/analysis/linear-probe.js';
import type { ModelConfig } from '../core/config.js';
import { evalImage } from '../core/data/preprocess.js';
import { SAMPLE_IMAGES } from '../core/home.js';
import { classifierFor } from '../core/model/classifier.js';
import { Rng } from '../core/random.js';
import { decodeSafetensors } from '../core/safetensors.js';
import { Store, type ProbeResult } from '../core/store/store.js';
import { loadCheckpoint } from '../core/train/checkpoint.js';
import { pixelRows } from '../core/runs/baselines.js';
import { localmim } from './support/cli.js';
import { describeWith, pathOf } from './support/requirements.js';

/** Gaussian classes around random centres: `spread` sets how much they overlap. */
function clusters(n: number, dim: number, classes: number, seed: number, spread = 1): Embedded {
  const rng = new Rng(seed);
  const centres = Float32Array.from({ length: classes * dim }, () => rng.normal());
  const labels = Array.from({ length: n }, (_, i) => i % classes);
  const features = new Float32Array(n * dim);
  labels.forEach((y, i) => {
    for (let d = 0; d < dim; d++) features[i * dim + d] = 3 + centres[y * dim + d]! + spread * rng.normal();
  });
  return { features, dim, labels };
}

const standardized = (x: Embedded, h: LinearHead) => Array.from(x.features, (v, i) => (v - h.mean[i % x.dim]!) / h.std[i % x.dim]!);

/** scikit-learn's multinomial LogisticRegression (lbfgs, tight tolerance) at C = 1 / (λ · n) on the head's standardisation. */
function sklearn(train: Embedded, head: LinearHead, lambda: number, query: Embedded, tol = 1e-10) {
  const script = `
import json, sys, numpy as np
from sklearn.linear_model import LogisticRegression
a = json.load(sys.stdin)
x = np.array(a['x']).reshape(-1, a['dim']); q = np.array(a['q']).reshape(-1, a['dim'])
m = LogisticRegression(C=a['C'], multi_class='multinomial', solver='lbfgs', tol=a['tol'], max_iter=100000).fit(x, a['y'])
print(json.dumps({'coef': m.coef_.T.ravel().tolist(), 'intercept': m.intercept_.tolist(), 'pred': m.predict(q).tolist()}))`;
  const input = JSON.stringify({
    x: standardized(train, head),
    y: train.labels,
    dim: train.dim,
    q: standardized(query, head),
    C: 1 / (lambda * train.labels.length),
    tol,
  });
  const r = spawnSync(pathOf('sklearn'), ['-c', script], { input, encoding: 'utf8', maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(r.stderr);
  return JSON.parse(r.stdout) as { coef: number[]; intercept: number[]; pred: number[] };
}

const accuracy = (pred: number[], labels: number[]) => pred.filter((p, i) => p === labels[i]).length / labels.length;

describeWith('sklearn')('the logistic probe against scikit-learn', () => {
  test.each([1e-1, 1e-3])('λ %s: the same objective gives the same coefficients and predictions', async (lambda) => {
    const train = clusters(240, 12, 3, 1, 2);
    const query = clusters(120, 12, 3, 2, 2);
    const { head } = await fitLinearProbe(train, 3, { grid: [lambda] });
    const ref = sklearn(train, head, lambda, query);
    const scale = Math.max(...ref.coef.map(Math.abs));
    const worst = Math.max(...ref.coef.map((c, i) => Math.abs(c - head.weight[i]!)));
    expect(worst / scale).toBeLessThan(1e-2);
    // scikit-learn's intercepts sum to zero under the penalty-free intercept only up to a shift shared by the classes.
    const shift = (b: ArrayLike<number>) => Array.from(b, (v) => v - Array.from(b).reduce((s, u) => s + u, 0) / b.length);
    shift(head.bias).forEach((v, k) => expect(v).toBeCloseTo(shift(ref.intercept)[k]!, 2));
    const logits = probeLogits(head, query);
    const ours = query.labels.map((_, i) => {
      const row = Array.from(logits.subarray(i * 3, i * 3 + 3));
      return row.indexOf(Math.max(...row));
    });
    expect(ours).toEqual(ref.pred);
  });

  test('the raw-pixel row on the sample crops (6 classes, 16 px): top-1 within 1 point of scikit-learn’s', async () => {
    const crops = readdirSync(SAMPLE_IMAGES)
      .filter((f) => f.endsWith('.jpg'))
      .sort();
    const classes = [...new Set(crops.map((f) => f.replace(/-\d+\.jpg$/, '')))];
    const part = (test: boolean) => {
      const files = crops.filter((f) => (Number(/-(\d+)\.jpg$/.exec(f)![1]) % 3 === 0) === test);
      return { files, labels: files.map((f) => classes.indexOf(f.replace(/-\d+\.jpg$/, ''))) };
    };
    const rows = async (p: ReturnType<typeof part>) => ({
      ...(await pixelRows(
        p.files.map((f) => ({ abs: join(SAMPLE_IMAGES, f), hash: f })),
        16,
      )),
      labels: p.labels,
    });
    const [train, val] = [await rows(part(false)), await rows(part(true))];
    const { head, lambda } = await fitLinearProbe(train, classes.length, { seed: 0 });
    const ref = sklearn(train, head, lambda, val, 1e-6);
    expect(Math.abs(probeTop1(head, val) - accuracy(ref.pred, val.labels))).toBeLessThanOrEqual(0.01);
  });

  test('with λ chosen on the hold-out, top-1 on new data is scikit-learn’s within 1 point', async () => {
    const train = clusters(600, 64, 10, 3, 4);
    const val = clusters(1000, 64, 10, 4, 4);
    const { head, lambda, holdoutTop1 } = await fitLinearProbe(train, 10, { seed: 0 });
    const ref = sklearn(train, head, lambda, val);
    const ours = probeTop1(head, val);
    expect(Math.abs(ours - accuracy(ref.pred, val.labels))).toBeLessThanOrEqual(0.01);
    expect(holdoutTop1).toBeGreaterThan(0.2); // well above chance (0.1): the hold-out chose a sensible λ
  });
});

describe('the logistic probe', () => {
  test('is deterministic, and leaves no tensor behind', async () => {
    const train = clusters(200, 16, 4, 5, 3);
    const before = tf.memory().numTensors;
    const a = await fitLinearProbe(train, 4, { seed: 3 });
    expect(tf.memory().numTensors).toBe(before);
    const b = await fitLinearProbe(train, 4, { seed: 3 });
    expect(b.lambda).toBe(a.lambda);
    expect(Buffer.from(b.head.weight.buffer).equals(Buffer.from(a.head.weight.buffer))).toBe(true);
    expect(Buffer.from(b.head.bias.buffer).equals(Buffer.from(a.head.bias.buffer))).toBe(true);
  });

  test('the hold-out is a seeded fifth of each class, and a class of one stays in the fit', () => {
    const labels = [...Array(10).fill(0), ...Array(20).fill(1), 2] as number[];
    const { fit, holdout } = holdoutSplit(labels, 7);
    expect(holdout.map((i) => labels[i])).toEqual([0, 0, 1, 1, 1, 1]);
    expect([...fit, ...holdout].sort((a, b) => a - b)).toEqual(labels.map((_, i) => i));
    expect(holdoutSplit(labels, 7)).toEqual({ fit, holdout });
    expect(holdoutSplit(labels, 8).holdout).not.toEqual(holdout);
  });
});

describe('localmim finetune --linear-probe', () => {
  const dir = mkdtempSync(join(tmpdir(), 'localmim-logistic-'));
  const home = join(dir, 'home');
  const labeled = join(dir, 'labeled'); // train/<class>/ and val/<class>/: 6 classes, 8 + 4 crops each
  const val: { abs: string; label: number }[] = [];
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const jsonLines = (stdout: string) =>
    stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { type: string; runId: number; top1: number; loss: number } & Partial<ProbeResult>);

  beforeAll(() => {
    const crops = readdirSync(SAMPLE_IMAGES).filter((f) => /-(\d+)\.jpg$/.test(f) && Number(/-(\d+)\.jpg$/.exec(f)![1]) < 12);
    const classes = [...new Set(crops.map((f) => f.replace(/-\d+\.jpg$/, '')))].sort();
    for (const f of crops.sort()) {
      const cls = f.replace(/-\d+\.jpg$/, '');
      const part = Number(/-(\d+)\.jpg$/.exec(f)![1]) < 8 ? 'train' : 'val';
      mkdirSync(join(labeled, part, cls), { recursive: true });
      symlinkSync(join(SAMPLE_IMAGES, f), join(labeled, part, cls, f));
      if (part === 'val') val.push({ abs: join(labeled, part, cls, f), label: classes.indexOf(cls) });
    }
    const config = join(dir, 'tiny.json');
    writeFileSync(
      config,
      JSON.stringify({
        model: { D: 32, depth: 4, heads: 2, decoderDim: 16, decoderHeads: 2, imgSize: 32 },
        optim: { epochs: 1, batch: 16, warmupEpochs: 0.2, blr: 2e-3 },
      }),
    );
    const r = localmim(['pretrain', '--json', '--home', home, '--config', config, '--data', join(labeled, 'train'), '--max-steps', '2']);
    expect(r.code, r.stderr).toBe(0);
  });

  test('ends with the probe event: top-1 on the validation images beside raw pixels and the untrained backbone', () => {
    const r = localmim(['finetune', '--json', '--home', home, '--from', '1', '--data', labeled, '--linear-probe']);
    expect(r.code, r.stderr).toBe(0);
    const events = jsonLines(r.stdout);
    expect(events.map((e) => e.type)).toEqual(['start', 'step', 'eval', 'checkpoint', 'end', 'probe']);
    const probe = events.at(-1)!;
    for (const f of [probe.top1, probe.baselines!.pixels, probe.baselines!.init, probe.holdoutTop1!]) {
      expect(f).toBeGreaterThanOrEqual(0);
      expect(f).toBeLessThanOrEqual(1);
    }
    expect(probe).toMatchObject({ features: 'last', dims: 32, top1: events[2]!.top1 });
    expect(PROBE_GRID).toContain(probe.lambda);
    expect(probe.top1).toBeGreaterThan(1 / 6); // above chance
    const store = new Store(join(home, 'localmim.db'));
    expect({ type: 'probe', runId: probe.runId, ...store.run(probe.runId)!.probeResult }).toEqual(probe);
    store.close();
  });

  test('its checkpoint is MAE’s probe head, and the export reproduces the probe’s validation top-1 and loss', async () => {
    const r = localmim(['finetune', '--json', '--home', home, '--from', '1', '--data', labeled, '--linear-probe']);
    expect(r.code, r.stderr).toBe(0);
    const events = jsonLines(r.stdout);
    const { runId } = events[0]!;
    const evaluated = events.find((e) => e.type === 'eval')!;
    const store = new Store(join(home, 'localmim.db'));
    const ckpt = loadCheckpoint(store.checkpoints(runId).at(-1)!.path).tensors;
    const model = store.run(runId)!.config as { model: ModelConfig };
    store.close();
    const out = join(dir, `export-${runId}`);
    expect(localmim(['export', String(runId), '--home', home, '--out', out]).code).toBe(0);
    const exported = decodeSafetensors(readFileSync(join(out, 'model.safetensors')), out).tensors;
    const images = await Promise.all(val.map((v) => evalImage(v.abs, 32)));
    const labels = val.map((v) => v.label);
    for (const [probe, tensors] of [
      [true, ckpt],
      [false, exported],
    ] as const) {
      const classifier = classifierFor(model.model, { classes: 6, probe }, 0);
      classifier.params.assign(new Map([...tensors].map(([n, t]) => [n, t.values])));
      const logits = tf.tidy(() => tf.logSoftmax(classifier.logits(images)));
      const rows = (await logits.array()) as number[][];
      logits.dispose();
      classifier.dispose();
      const top1 = rows.filter((row, i) => row.indexOf(Math.max(...row)) === labels[i]).length / rows.length;
      const loss = -rows.reduce((s, row, i) => s + row[labels[i]!]!, 0) / rows.length;
      expect(top1, probe ? 'checkpoint' : 'export').toBe(evaluated.top1);
      expect(loss).toBeCloseTo(evaluated.loss, 3);
    }
  });

  test('--probe-features last4: the last 4 blocks’ features side by side', () => {
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
      '--probe-features',
      'last4',
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(jsonLines(r.stdout).at(-1)).toMatchObject({ type: 'probe', features: 'last4', dims: 4 * 32 });
  });

  test('a second probe of the same checkpoint embeds nothing again; the baselines are computed once; the summary', () => {
    const embeddings = join(home, 'embeddings');
    const stamp = () =>
      readdirSync(embeddings, { recursive: true }).map((f) => `${String(f)}@${statSync(join(embeddings, String(f))).mtimeMs}`);
    const probe = () => localmim(['finetune', '--home', home, '--from', '1', '--data', labeled, '--linear-probe']);
    expect(probe().code).toBe(0);
    const before = stamp();
    const r = probe();
    expect(r.code, r.stderr).toBe(0);
    expect(stamp()).toEqual(before);
    const [numbers, gain] = r.stderr.trim().split('\n').slice(-2);
    expect(numbers).toMatch(/^linear probe top-1 [\d.]+ % .*; no pretraining [\d.]+ %, raw pixels [\d.]+ %$/);
    expect(gain).toMatch(/^pretraining: [+-][\d.]+ points over no pretraining, [+-][\d.]+ vs raw pixels$/);
    expect(before.some((f) => f.startsWith('baselines/'))).toBe(true);
  });

  test('probe flags without --linear-probe, or an unknown recipe, are one clear line', () => {
    const alone = localmim(['finetune', '--home', home, '--from', '1', '--data', labeled, '--probe-recipe', 'lars']);
    expect(alone.code).not.toBe(0);
    expect(alone.stderr.trim().split('\n').at(-1)).toMatch(/--probe-recipe goes with --linear-probe/);
    const bad = localmim(['finetune', '--home', home, '--from', '1', '--data', labeled, '--linear-probe', '--probe-recipe', 'sgd']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr.trim().split('\n').at(-1)).toMatch(/probeRecipe/);
  });
});
