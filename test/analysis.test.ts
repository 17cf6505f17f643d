import { expect, test } from 'vitest';
import * as tf from '@tensorflow/tfjs';
import { attentionAnalysis, meanPairKL, nmi } from '../core/analysis/attention.js';
import { blockGradientNorms } from '../core/analysis/gradients.js';
import { attentionOverSet, chooseImages, gradientNormsOverSet, spread, type Spread } from '../core/analysis/set.js';
import { parseRunConfig } from '../core/config.js';
import { LocalMIM } from '../core/model/localmim.js';
import { Rng, seedFor } from '../core/random.js';
import { syntheticImages } from './support/images.js';
import './support/setup.js';

const N = 16;
const matrix = (f: (q: number, k: number) => number) => {
  const A = Float64Array.from({ length: N * N }, (_, i) => f(Math.floor(i / N), i % N));
  for (let q = 0; q < N; q++) {
    const s = A.subarray(q * N, (q + 1) * N).reduce((a, b) => a + b, 0);
    for (let k = 0; k < N; k++) A[q * N + k]! /= s;
  }
  return A;
};
const rng = new Rng(3);
const random = () => matrix(() => rng.next() ** 3);

test('uniform attention: NMI 0 and KL 0', () => {
  const A = matrix(() => 1);
  expect(nmi(A, N, N)).toBeCloseTo(0, 12);
  expect(meanPairKL(A, N, N)).toBeCloseTo(0, 12);
});

test('attention that does not depend on the query: NMI 0 and KL 0', () => {
  const A = matrix((_, k) => 1 + k * k);
  expect(nmi(A, N, N)).toBeCloseTo(0, 12);
  expect(meanPairKL(A, N, N)).toBeCloseTo(0, 12);
});

test('one-hot attention to distinct keys: NMI 1, and a KL above any of many random attentions', () => {
  const A = matrix((q, k) => (k === (q * 5) % N ? 1 : 0));
  expect(nmi(A, N, N)).toBeCloseTo(1, 12);
  const kl = meanPairKL(A, N, N);
  for (let i = 0; i < 20; i++) {
    const R = random();
    expect(nmi(R, N, N)).toBeLessThan(1);
    expect(kl).toBeGreaterThan(meanPairKL(R, N, N));
  }
});

test('the mean pairwise KL is the mean of KL(r_i‖r_j) over ordered pairs of distinct rows, summed term by term', () => {
  const pairwise = (A: Float64Array, eps = 1e-6) => {
    const rows = Array.from({ length: N }, (_, q) => {
      const r = Array.from(A.subarray(q * N, (q + 1) * N), (v) => v + eps);
      const s = r.reduce((a, b) => a + b, 0);
      return r.map((v) => v / s);
    });
    let total = 0;
    for (let i = 0; i < N; i++)
      for (let j = 0; j < N; j++) if (i !== j) rows[i]!.forEach((p, k) => (total += p * Math.log(p / rows[j]![k]!)));
    return total / (N * (N - 1));
  };
  for (const A of [random(), random(), matrix((q, k) => (k === q ? 1 : 0))]) {
    const want = pairwise(A);
    expect(Math.abs(meanPairKL(A, N, N) - want)).toBeLessThan(1e-9 * Math.max(1, want));
  }
});

test('spread: mean, sample std and quartiles as numpy (np.std(ddof=1), np.percentile linear)', () => {
  expect(spread([4, 1, 3, 2])).toEqual({
    mean: 2.5,
    std: Math.sqrt(5 / 3),
    min: 1,
    q1: 1.75,
    median: 2.5,
    q3: 3.25,
    max: 4,
    values: [4, 1, 3, 2],
  });
  expect(spread([7])).toMatchObject({ mean: 7, std: 0, min: 7, q1: 7, median: 7, q3: 7, max: 7 });
  // np.percentile([0, 10, 20, 30, 40, 100], [25, 50, 75]) = [12.5, 25, 37.5]
  expect(spread([100, 0, 40, 10, 30, 20])).toMatchObject({ q1: 12.5, median: 25, q3: 37.5 });
});

test('the seeded choice of images: deterministic, n distinct items in their order, uniform over seeds, all when n ≥ count', () => {
  const items = Array.from({ length: 20 }, (_, i) => `img-${String(i).padStart(2, '0')}.png`);
  const a = chooseImages(items, 5, 7);
  expect(chooseImages(items, 5, 7)).toEqual(a);
  expect(new Set(a).size).toBe(5);
  expect([...a].sort()).toEqual(a);
  expect(chooseImages(items, 5, 8)).not.toEqual(a);
  const counts = new Map(items.map((i) => [i, 0]));
  for (let seed = 0; seed < 2000; seed++) for (const i of chooseImages(items, 5, seed)) counts.set(i, counts.get(i)! + 1);
  // Each item is chosen with probability 5/20: 500 of 2000 (σ ≈ 19).
  for (const c of counts.values()) expect(Math.abs(c - 500)).toBeLessThan(100);
  expect(chooseImages(items, 20, 3)).toEqual(items);
  expect(chooseImages(items, 64, 3)).toEqual(items);
  expect(() => chooseImages(items, 0, 3)).toThrow(/images: expected a positive integer, got 0/);
});

const TINY = parseRunConfig({ model: { D: 32, depth: 4, heads: 2, decoderDim: 16, decoderHeads: 2, imgSize: 32, patchSize: 8 } }).model;

/** What a researcher would compute from the per-image values: mean and sample standard deviation. */
function expectStats(s: Spread, oneByOne: number[], digits: number) {
  const mean = oneByOne.reduce((a, b) => a + b, 0) / oneByOne.length;
  const std = Math.sqrt(oneByOne.reduce((a, v) => a + (v - mean) ** 2, 0) / (oneByOne.length - 1));
  s.values.forEach((v, i) => expect(v).toBeCloseTo(oneByOne[i]!, digits));
  expect(s.mean).toBeCloseTo(mean, digits);
  expect(s.std).toBeCloseTo(std, digits);
  expect(s.min).toBeCloseTo(Math.min(...oneByOne), digits);
  expect(s.max).toBeCloseTo(Math.max(...oneByOne), digits);
}

test('NMI and KL over a set, batched (7 images, 3 per pass, and all at once): the statistics of the per-image analysis', async () => {
  const model = new LocalMIM(TINY, 1);
  const P = (n: string) => model.params.get(n);
  const images = syntheticImages(7, 32, 11);
  const oneByOne = await Promise.all(images.map((img) => attentionAnalysis(P, TINY, img, 0)));
  for (const perPass of [3, undefined]) {
    const layers = await attentionOverSet(P, TINY, images, perPass);
    expect(layers.map((l) => l.block)).toEqual([0, 1, 2, 3]);
    for (const l of layers) {
      expectStats(
        l.nmi,
        oneByOne.map((layers) => layers[l.block]!.nmi),
        5,
      );
      expectStats(
        l.kl,
        oneByOne.map((layers) => layers[l.block]!.kl),
        4,
      );
    }
    expect(layers[0]!.nmi.std).toBeGreaterThan(0);
  }
  model.dispose();
});

test('gradient norms over a set: per image with its own mask, the statistics of blockGradientNorms image by image', async () => {
  const model = new LocalMIM(TINY, 2);
  const images = syntheticImages(4, 32, 12);
  const oneByOne: number[][] = [];
  for (const [i, img] of images.entries()) oneByOne.push(await blockGradientNorms(model, [img], seedFor(5, i)));
  const norms = await gradientNormsOverSet(model, images, 5);
  expect(norms).toHaveLength(4);
  norms.forEach((s, block) =>
    expectStats(
      s,
      oneByOne.map((g) => g[block]!),
      5,
    ),
  );
  expect(norms.every((s) => s.min > 0)).toBe(true);
  model.dispose();
});

test('the attention maps of every block and head are distributions over the patches', async () => {
  const cfg = parseRunConfig({ model: { D: 32, depth: 4, heads: 2, decoderDim: 16, decoderHeads: 2, imgSize: 32, patchSize: 8 } });
  const model = new LocalMIM(cfg.model, 0);
  const layers = await attentionAnalysis((n) => model.params.get(n), cfg.model, syntheticImages(1, 32, 4)[0]!, 5);
  expect(layers).toHaveLength(4);
  for (const l of layers) {
    expect(l.heads).toHaveLength(2);
    for (const map of [...l.heads, l.mean]) {
      expect(map).toHaveLength(16);
      expect(map.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 5);
    }
    expect(l.nmi).toBeGreaterThanOrEqual(0);
    expect(l.nmi).toBeLessThanOrEqual(1);
  }
  await expect(attentionAnalysis((n) => model.params.get(n), cfg.model, syntheticImages(1, 32, 4)[0]!, 16)).rejects.toThrow(
    /query: patch 16 is outside/,
  );
  model.dispose();
});

test('inference leaves tf.memory().numTensors flat: features, attention analysis, and the analyses over a set', async () => {
  const { backboneFeatures } = await import('../core/model/classifier.js');
  const cfg = parseRunConfig({ model: { D: 32, depth: 4, heads: 2, decoderDim: 16, decoderHeads: 2, imgSize: 32, patchSize: 8 } });
  const model = new LocalMIM(cfg.model, 0);
  const P = (n: string) => model.params.get(n);
  const img = syntheticImages(1, 32, 4)[0]!;
  const before = tf.memory().numTensors;
  for (let i = 0; i < 3; i++) {
    tf.tidy(() => backboneFeatures(P, model.dims, [img]).dataSync());
    await attentionAnalysis(P, cfg.model, img, 3);
    await attentionOverSet(P, cfg.model, [img, img, img], 2);
    await gradientNormsOverSet(model, [img, img], i);
  }
  expect(tf.memory().numTensors).toBe(before);
  model.dispose();
});
