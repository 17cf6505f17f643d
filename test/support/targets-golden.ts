import * as tf from '@tensorflow/tfjs';
import { expect } from 'vitest';
import { hog } from '../../core/targets/hog.js';
import { normalize, toTensor } from '../../core/image.js';
import { pixelTargets } from '../../core/targets/pixels.js';
import { goldenImage, readGolden, worstExcess } from './golden.js';

interface GoldenScale {
  pool: number;
  shape: [number, number];
  values: number[];
  exact_overrides: { index: number[]; value: number[] } | null;
  slack: { cell: number[]; channel: number[]; value: number[] } | null;
}
interface GoldenPixel {
  patch: number;
  shape: [number, number];
  norm_pix: boolean;
  values?: number[];
  selected_patches?: number[];
  selected_values?: number[][];
  stats: { sum_abs: number; sum_sq: number };
}
export interface GoldenImage {
  name: string;
  height: number;
  width: number;
  pixels_u8_hwc: number[];
  hog: { nbins: number; bias: [number, number] | null; scales: GoldenScale[] }[];
  pixel: GoldenPixel[];
}

export const golden = readGolden<{ images: GoldenImage[] }>('hog_targets.json');

/** Our HOG targets of a golden image against the official ones (test/golden/README.md), on whichever backend runs. */
export async function expectHogMatches(image: GoldenImage, { nbins, bias, scales }: GoldenImage['hog'][number]): Promise<void> {
  const cells = scales.map((s) => s.pool);
  const ours = await read(() => hog(toTensor([goldenImage(image)]), nbins, cells, bias ? cells.map(() => tf.tensor1d(bias)) : undefined));
  scales.forEach((scale, k) => {
    expect(ours[k]!.length).toBe(scale.shape[0] * scale.shape[1]);
    if (bias) {
      // No slack in the bias case: the responses are computed on the normalised image, as officially.
      expect(worstExcess(ours[k]!, scale.values, () => 1e-5).excess).toBeLessThanOrEqual(0);
      return;
    }
    const exact = Float64Array.from(scale.values);
    scale.exact_overrides?.index.forEach((i, j) => (exact[i] = scale.exact_overrides!.value[j]!));
    const worst = worstExcess(ours[k]!, exact, () => 3e-6);
    expect(worst.excess, `cell ${scale.pool}: index ${worst.index}`).toBeLessThanOrEqual(0);

    const slack = new Float64Array(scale.shape[0] * 3);
    scale.slack?.cell.forEach((cell, j) => (slack[cell * 3 + scale.slack!.channel[j]!] = scale.slack!.value[j]!));
    const F = 3 * nbins;
    const official = worstExcess(ours[k]!, scale.values, (i) => 1e-5 + slack[Math.floor(i / F) * 3 + Math.floor((i % F) / nbins)]!);
    expect(official.excess, `cell ${scale.pool}: index ${official.index}`).toBeLessThanOrEqual(0);
  });
}

/** Our normalized-pixel targets of a golden image against the official ones. */
export async function expectPixelsMatch(image: GoldenImage, px: GoldenPixel): Promise<void> {
  const ours = (await read(() => [pixelTargets(normalize(toTensor([goldenImage(image)])), px.patch, px.norm_pix)]))[0]!;
  const F = px.shape[1];
  expect(ours.length).toBe(px.shape[0] * F);
  if (px.values) {
    expect(worstExcess(ours, px.values, () => 1e-5).excess).toBeLessThanOrEqual(0);
    return;
  }
  px.selected_patches!.forEach((token, j) => {
    expect(worstExcess(ours.subarray(token * F, (token + 1) * F), px.selected_values![j]!, () => 1e-5).excess).toBeLessThanOrEqual(0);
  });
  const sumAbs = ours.reduce((s, v) => s + Math.abs(v), 0);
  const sumSq = ours.reduce((s, v) => s + v * v, 0);
  expect(Math.abs(sumAbs / px.stats.sum_abs - 1)).toBeLessThan(1e-5);
  expect(Math.abs(sumSq / px.stats.sum_sq - 1)).toBeLessThan(1e-5);
}

/** Runs `make` on whichever backend is active and reads its tensors back, leaving none behind. */
async function read(make: () => tf.Tensor[]): Promise<Float32Array[]> {
  const before = tf.memory().numTensors;
  const out = tf.tidy(make);
  const values = (await Promise.all(out.map((t) => t.data()))) as Float32Array[];
  tf.dispose(out);
  expect(tf.memory().numTensors).toBe(before);
  return values;
}
