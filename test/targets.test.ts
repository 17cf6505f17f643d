import { describe, expect, test } from 'vitest';
import { hog } from '../core/targets/hog.js';
import { pixelTargets } from '../core/targets/pixels.js';
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
interface GoldenImage {
  name: string;
  height: number;
  width: number;
  pixels_u8_hwc: number[];
  hog: { nbins: number; bias: [number, number] | null; scales: GoldenScale[] }[];
  pixel: GoldenPixel[];
}

const golden = readGolden<{ images: GoldenImage[] }>('hog_targets.json');

describe.each(golden.images)('$name', (image) => {
  const img = goldenImage(image);

  test.each(image.hog)('HOG nbins=$nbins bias=$bias', ({ nbins, bias, scales }) => {
    const cells = scales.map((s) => s.pool);
    const ours = hog(img, nbins, cells, bias ? cells.map(() => bias) : undefined);
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
  });

  test.each(image.pixel)('normalized pixels p=$patch', (px) => {
    const ours = pixelTargets(img, px.patch, px.norm_pix);
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
  });
});
