import * as tf from '@tensorflow/tfjs';
import { PROBE_EPS } from '../model/classifier.js';
import { Rng, seedFor, STREAMS } from '../random.js';

/** Row-major features `[N, D]` with one label per row. */
export interface Embedded {
  features: Float32Array;
  dim: number;
  labels: number[];
}

/**
 * A fitted linear probe: standardise each feature (`(x − mean) / std`), then `x · weight + bias`. The standardisation is
 * exactly a BatchNorm's with running mean `mean` and running variance `std² − eps` (MAE's probe head.0).
 */
export interface LinearHead {
  mean: Float32Array;
  std: Float32Array;
  /** `[D, K]`, row-major. */
  weight: Float32Array;
  bias: Float32Array;
}

/** λ of `mean cross-entropy + λ/2 · ‖W‖²` (scikit-learn's C is 1 / (λ · n)), tried from the largest. */
export const PROBE_GRID = [1, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5];
/** Share of each class's training labels held out to choose λ. */
export const HOLDOUT_FRACTION = 0.2;
/** The fit stops when no gradient entry exceeds this (scikit-learn's default tol), or after `MAX_ITER` L-BFGS iterations. */
export const PROBE_TOLERANCE = 1e-4;
const MAX_ITER = 500;
/** The sweep's fits only rank λ on the hold-out: fewer iterations do (ill-conditioned features converge slowly). */
const SWEEP_ITER = 100;
/** L-BFGS memory. */
const HISTORY = 10;

export interface ProbeFit {
  head: LinearHead;
  lambda: number;
  /** Top-1 of the chosen λ on the held-out training labels. */
  holdoutTop1: number;
}

/**
 * Multinomial L2-regularised logistic regression on standardised features, fitted full-batch by L-BFGS (deterministic,
 * no learning rate). λ is the grid's best on a seeded stratified hold-out of the training labels (ties: the larger);
 * then the head is refitted on all of them. Products run as tfjs matMuls on the current backend (many times faster
 * than loops here, docs/results.md), everything else in float64.
 */
export async function fitLinearProbe(train: Embedded, classes: number, o: { seed?: number; grid?: number[] } = {}): Promise<ProbeFit> {
  const { mean, std } = standardizer(train);
  const x = standardize(train.features, mean, std);
  const { fit, holdout } = holdoutSplit(train.labels, o.seed ?? 0);
  if (!holdout.length) throw new Error('linear probe: no class has two labeled images to hold one out');
  const grid = [...(o.grid ?? PROBE_GRID)].sort((a, b) => b - a);
  const part = rowsOf(x, train.dim, fit);
  const held = { features: rowsOf(x, train.dim, holdout), dim: train.dim, labels: holdout.map((i) => train.labels[i]!) };
  const best = { lambda: grid[0]!, top1: -1, theta: undefined as Float64Array | undefined };
  let theta: Float64Array | undefined;
  for (const lambda of grid) {
    theta = await minimize(
      { features: part, dim: train.dim, labels: fit.map((i) => train.labels[i]!) },
      classes,
      lambda,
      theta,
      SWEEP_ITER,
    );
    const top1 = top1Of(logitsOf(headOf(theta, train.dim, classes), held), held.labels, classes);
    if (top1 > best.top1) Object.assign(best, { lambda, top1, theta });
  }
  const all = await minimize({ features: x, dim: train.dim, labels: train.labels }, classes, best.lambda, best.theta, MAX_ITER);
  return { head: { mean, std, ...headOf(all, train.dim, classes) }, lambda: best.lambda, holdoutTop1: best.top1 };
}

/** Class scores `[N, K]` of raw features through a fitted head. */
export function probeLogits(head: LinearHead, x: Embedded): Float32Array {
  return logitsOf(head, { ...x, features: standardize(x.features, head.mean, head.std) });
}

/** Top-1 accuracy of a fitted head on labeled features. */
export function probeTop1(head: LinearHead, x: Embedded): number {
  return top1Of(probeLogits(head, x), x.labels, head.bias.length);
}

/** Mean cross-entropy of a fitted head on labeled features. */
export function probeCrossEntropy(head: LinearHead, x: Embedded): number {
  const logits = probeLogits(head, x);
  const K = head.bias.length;
  let total = 0;
  x.labels.forEach((y, i) => {
    const row = logits.subarray(i * K, (i + 1) * K);
    const max = Math.max(...row);
    total += max + Math.log(row.reduce((s, v) => s + Math.exp(v - max), 0)) - row[y]!;
  });
  return x.labels.length ? total / x.labels.length : 0;
}

/**
 * Each `segment`-long piece of each row through a LayerNorm without affine (eps as the model's, 1e-6): the ViT
 * classifier's `fc_norm` as a probe leaves it, so the probe fits what the classifier's head sees.
 */
export function layerNormRows(x: Float32Array, segment: number, eps = 1e-6): Float32Array {
  const out = new Float32Array(x.length);
  for (let at = 0; at < x.length; at += segment) {
    const v = x.subarray(at, at + segment);
    const mean = v.reduce((s, u) => s + u, 0) / segment;
    const variance = v.reduce((s, u) => s + (u - mean) ** 2, 0) / segment;
    const inv = 1 / Math.sqrt(variance + eps);
    for (let d = 0; d < segment; d++) out[at + d] = (v[d]! - mean) * inv;
  }
  return out;
}

/** Each feature's mean and `sqrt(variance + eps)` over the rows, eps as MAE's probe BatchNorm's. */
export function standardizer(x: Embedded): { mean: Float32Array; std: Float32Array } {
  const { dim } = x;
  const n = x.labels.length;
  const sum = new Float64Array(dim);
  const sq = new Float64Array(dim);
  for (let i = 0; i < n; i++)
    for (let d = 0; d < dim; d++) {
      const v = x.features[i * dim + d]!;
      sum[d]! += v;
      sq[d]! += v * v;
    }
  const mean = Float32Array.from(sum, (s) => s / n);
  const std = Float32Array.from(sq, (s, d) => Math.sqrt(Math.max(0, s / n - mean[d]! ** 2) + PROBE_EPS));
  return { mean, std };
}

function standardize(features: Float32Array, mean: Float32Array, std: Float32Array): Float32Array {
  const dim = mean.length;
  return features.map((v, i) => (v - mean[i % dim]!) / std[i % dim]!);
}

/** Per class, a seeded `HOLDOUT_FRACTION` of its rows (at least one where it has two) held out. */
export function holdoutSplit(labels: number[], seed: number): { fit: number[]; holdout: number[] } {
  const byClass = new Map<number, number[]>();
  labels.forEach((y, i) => byClass.set(y, [...(byClass.get(y) ?? []), i]));
  const fit: number[] = [];
  const holdout: number[] = [];
  for (const [y, rows] of [...byClass].sort(([a], [b]) => a - b)) {
    const rng = new Rng(seedFor(seed, STREAMS.holdout, y));
    const order = rows.map((i) => [rng.next(), i] as const).sort(([a], [b]) => a - b);
    const k = rows.length < 2 ? 0 : Math.max(1, Math.round(rows.length * HOLDOUT_FRACTION));
    order.forEach(([, i], j) => (j < k ? holdout : fit).push(i));
  }
  return { fit: fit.sort((a, b) => a - b), holdout: holdout.sort((a, b) => a - b) };
}

function rowsOf(x: Float32Array, dim: number, rows: number[]): Float32Array {
  const out = new Float32Array(rows.length * dim);
  rows.forEach((r, i) => out.set(x.subarray(r * dim, (r + 1) * dim), i * dim));
  return out;
}

const headOf = (theta: Float64Array, dim: number, classes: number) => ({
  weight: Float32Array.from(theta.subarray(0, dim * classes)),
  bias: Float32Array.from(theta.subarray(dim * classes)),
});

/** `x · weight + bias` of already standardised rows. */
function logitsOf(head: Pick<LinearHead, 'weight' | 'bias'>, x: Embedded): Float32Array {
  const { dim } = x;
  const K = head.bias.length;
  const n = x.labels.length;
  const out = new Float32Array(n * K);
  const z = new Float64Array(K);
  for (let i = 0; i < n; i++) {
    z.set(head.bias);
    for (let d = 0; d < dim; d++) {
      const v = x.features[i * dim + d]!;
      if (v !== 0) for (let k = 0; k < K; k++) z[k]! += v * head.weight[d * K + k]!;
    }
    out.set(z, i * K);
  }
  return out;
}

function top1Of(logits: Float32Array, labels: number[], K: number): number {
  let correct = 0;
  labels.forEach((y, i) => {
    let best = 0;
    for (let k = 1; k < K; k++) if (logits[i * K + k]! > logits[i * K + best]!) best = k;
    if (best === y) correct++;
  });
  return labels.length ? correct / labels.length : 0;
}

/** `mean cross-entropy + λ/2 · ‖W‖²` over θ = [W (D·K, row-major), b (K)] by L-BFGS from `start` (zeros if absent). */
async function minimize(x: Embedded, classes: number, lambda: number, start: Float64Array | undefined, maxIter: number) {
  const { dim } = x;
  const n = x.labels.length;
  const X = tf.tensor2d(x.features, [n, dim]);
  const Y = tf.tidy(() => tf.oneHot(tf.tensor1d(x.labels, 'int32'), classes).toFloat());
  const objective = (theta: Float64Array) => lossAndGradient(X, Y, theta, dim, classes, lambda);
  try {
    return await lbfgs(objective, start ? Float64Array.from(start) : new Float64Array(dim * classes + classes), maxIter);
  } finally {
    tf.dispose([X, Y]);
  }
}

async function lossAndGradient(X: tf.Tensor2D, Y: tf.Tensor, theta: Float64Array, dim: number, K: number, lambda: number) {
  const n = X.shape[0];
  const [margin, gW, gb] = tf.tidy(() => {
    const W = tf.tensor2d(Float32Array.from(theta.subarray(0, dim * K)), [dim, K]);
    const z = tf.add(tf.matMul(X, W), tf.tensor1d(Float32Array.from(theta.subarray(dim * K))));
    const lse = tf.logSumExp(z, 1, true);
    const r = tf.div(tf.sub(tf.exp(tf.sub(z, lse)), Y), n); // (softmax − onehot) / n
    return [tf.sub(tf.squeeze(lse, [1]), tf.sum(tf.mul(z, Y), 1)), tf.matMul(X, r, true, false), tf.sum(r, 0)];
  });
  const [m, w, b] = await Promise.all([margin.data(), gW.data(), gb.data()]);
  tf.dispose([margin, gW, gb]);
  const grad = new Float64Array(theta.length);
  let f = (m as Float32Array).reduce((s, v) => s + v, 0) / n; // summed in float64: the line search compares values this close
  for (let i = 0; i < dim * K; i++) {
    f += (lambda / 2) * theta[i]! ** 2;
    grad[i] = w[i]! + lambda * theta[i]!;
  }
  grad.set(b, dim * K);
  return { f, grad };
}

const dot = (a: Float64Array, b: Float64Array) => a.reduce((s, v, i) => s + v * b[i]!, 0);
const maxAbs = (a: Float64Array) => a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);

/**
 * L-BFGS (two-loop recursion) with a backtracking Armijo line search; stops at `PROBE_TOLERANCE`, after `maxIter`
 * iterations, or when no step along the direction lowers the objective any more (float32 round-off).
 */
async function lbfgs(objective: (t: Float64Array) => Promise<{ f: number; grad: Float64Array }>, theta: Float64Array, maxIter: number) {
  let { f, grad } = await objective(theta);
  const pairs: { s: Float64Array; y: Float64Array; rho: number }[] = [];
  for (let iter = 0; iter < maxIter && maxAbs(grad) > PROBE_TOLERANCE; iter++) {
    const dir = direction(grad, pairs);
    const slope = dot(dir, grad);
    let step = pairs.length ? 1 : 1 / Math.max(1, Math.sqrt(dot(grad, grad)));
    let next: { theta: Float64Array; f: number; grad: Float64Array } | undefined;
    for (let tries = 0; tries < 20 && !next; tries++, step /= 2) {
      const t = theta.map((v, i) => v + step * dir[i]!);
      const r = await objective(t);
      if (r.f <= f + 1e-4 * step * slope) next = { theta: t, ...r };
    }
    if (!next || next.f >= f) break;
    const s = next.theta.map((v, i) => v - theta[i]!);
    const y = next.grad.map((v, i) => v - grad[i]!);
    const sy = dot(s, y);
    if (sy > 1e-12) pairs.push({ s, y, rho: 1 / sy });
    if (pairs.length > HISTORY) pairs.shift();
    ({ theta, f, grad } = next);
  }
  return theta;
}

/** −H·g by the two-loop recursion, H₀ scaled by the last pair's s·y / y·y. */
function direction(grad: Float64Array, pairs: { s: Float64Array; y: Float64Array; rho: number }[]): Float64Array {
  const q = grad.map((v) => -v);
  const alphas = pairs.map(() => 0);
  for (let j = pairs.length - 1; j >= 0; j--) {
    const { s, y, rho } = pairs[j]!;
    alphas[j] = rho * dot(s, q);
    for (let i = 0; i < q.length; i++) q[i]! -= alphas[j]! * y[i]!;
  }
  const last = pairs.at(-1);
  const gamma = last ? 1 / last.rho / dot(last.y, last.y) : 1;
  for (let i = 0; i < q.length; i++) q[i]! *= gamma;
  for (const [j, { s, y, rho }] of pairs.entries()) {
    const beta = rho * dot(y, q);
    for (let i = 0; i < q.length; i++) q[i]! += (alphas[j]! - beta) * s[i]!;
  }
  return q;
}
