import { expect, test } from 'vitest';
import { attentionAnalysis, meanPairKL, nmi } from '../core/analysis/attention.js';
import { parseRunConfig } from '../core/config.js';
import { LocalMIM } from '../core/model/localmim.js';
import { Rng } from '../core/random.js';
import { syntheticImages } from './images.js';
import './setup.js';

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

test('inference leaves tf.memory().numTensors flat: features and attention analysis', async () => {
  const tf = await import('@tensorflow/tfjs');
  const { backboneFeatures } = await import('../core/model/classifier.js');
  const cfg = parseRunConfig({ model: { D: 32, depth: 4, heads: 2, decoderDim: 16, decoderHeads: 2, imgSize: 32, patchSize: 8 } });
  const model = new LocalMIM(cfg.model, 0);
  const P = (n: string) => model.params.get(n);
  const img = syntheticImages(1, 32, 4)[0]!;
  const before = tf.memory().numTensors;
  for (let i = 0; i < 3; i++) {
    tf.tidy(() => backboneFeatures(P, model.dims, [img]).dataSync());
    await attentionAnalysis(P, cfg.model, img, 3);
  }
  expect(tf.memory().numTensors).toBe(before);
  model.dispose();
});
