import { spawnSync } from 'node:child_process';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, test } from 'vitest';
import type { Embedded } from '../core/analysis/knn.js';
import { fitLinearProbe, holdoutSplit, probeLogits, probeTop1, type LinearHead } from '../core/analysis/linear-probe.js';
import { Rng } from '../core/random.js';
import { describeWith, pathOf } from './requirements.js';

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
function sklearn(train: Embedded, head: LinearHead, lambda: number, query: Embedded) {
  const script = `
import json, sys, numpy as np
from sklearn.linear_model import LogisticRegression
a = json.load(sys.stdin)
x = np.array(a['x']).reshape(-1, a['dim']); q = np.array(a['q']).reshape(-1, a['dim'])
m = LogisticRegression(C=a['C'], multi_class='multinomial', solver='lbfgs', tol=1e-10, max_iter=100000).fit(x, a['y'])
print(json.dumps({'coef': m.coef_.T.ravel().tolist(), 'intercept': m.intercept_.tolist(), 'pred': m.predict(q).tolist()}))`;
  const input = JSON.stringify({
    x: standardized(train, head),
    y: train.labels,
    dim: train.dim,
    q: standardized(query, head),
    C: 1 / (lambda * train.labels.length),
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
    expect(worst / scale).toBeLessThan(2e-3);
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
