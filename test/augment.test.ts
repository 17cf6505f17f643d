import * as tf from '@tensorflow/tfjs';
import { describe, expect, test } from 'vitest';
import { FinetuneConfigSchema, parseConfig } from '../core/config.js';
import { finetuneAugment, randomErase } from '../core/data/augment.js';
import {
  OPS,
  parseRandAugment,
  RAND_INCREASING_TRANSFORMS,
  randAugment,
  type OpName,
  type RandAugmentConfig,
} from '../core/data/randaugment.js';
import { Rng, seedFor } from '../core/random.js';
import { normalize, toTensor, type Rgb8 } from '../core/image.js';
import { mixBatch } from '../core/train/finetune.js';
import { readGolden } from './support/golden.js';

interface PilGolden {
  source: string;
  images: Record<string, { width: number; height: number; pixels: number[] }>;
  cases: { image: string; op: OpName; arg: number; out_b64: string }[];
}

const image = (width: number, height: number, f: (x: number, y: number, c: number) => number): Rgb8 => ({
  width,
  height,
  data: Uint8Array.from({ length: width * height * 3 }, (_, i) => f(Math.floor(i / 3) % width, Math.floor(i / 3 / width), i % 3)),
});
const tiny = image(6, 5, (x, y, c) => (x * 41 + y * 17 + c * 90) % 256);

describe('RandAugment', () => {
  test("every op equals Pillow's output byte for byte (as timm calls it)", () => {
    const golden = readGolden<PilGolden>('randaugment_pil.json');
    const imgs = Object.fromEntries(Object.entries(golden.images).map(([k, v]) => [k, { ...v, data: Uint8Array.from(v.pixels) }]));
    const wrong = golden.cases.filter((c) => {
      const out = OPS[c.op].apply(imgs[c.image]!, c.arg);
      return !Buffer.from(out.data).equals(Buffer.from(c.out_b64, 'base64'));
    });
    expect(golden.cases.length).toBe(90);
    expect(wrong.map((c) => `${c.op}(${c.arg}) on ${c.image}`)).toEqual([]);
  });

  test('the official string parses to timm’s increasing op set; malformed strings are errors', () => {
    expect(parseRandAugment('rand-m9-mstd0.5-inc1')).toEqual({
      magnitude: 9,
      layers: 2,
      magnitudeStd: 0.5,
      ops: RAND_INCREASING_TRANSFORMS,
    });
    expect(parseRandAugment('rand-n3-m5').ops).toContain('Posterize');
    for (const bad of ['auto-m9', 'rand-m9.5', 'rand-inc2', 'rand-m9-m8', 'rand-w0', 'rand-m9-', 'rand-mstd-1'])
      expect(() => parseRandAugment(bad), bad).toThrow(new RegExp(`"${bad}"`));
    const parse = (randAugment: unknown) => parseConfig(FinetuneConfigSchema, { randAugment }, 'finetune').randAugment;
    expect(parse(undefined)).toBe('rand-m9-mstd0.5-inc1');
    expect(parse('')).toBeNull();
    expect(parse(null)).toBeNull();
    expect(() => parse('rand-x9')).toThrow(/finetune: invalid config: randAugment: "rand-x9": section "x9" has an unknown key/);
  });

  // One op, at magnitude 9 without noise: each image is either untouched (p = 0.5) or the op's hand-computed result.
  const only = (op: OpName, magnitudeStd = 0): RandAugmentConfig => ({ magnitude: 9, layers: 1, magnitudeStd, ops: [op] });
  const outcomes = (c: RandAugmentConfig, expected: Record<string, (v: number) => number>) => {
    const counts: Record<string, number> = Object.fromEntries(Object.keys(expected).map((k) => [k, 0]));
    for (let seed = 0; seed < 200; seed++) {
      const out = randAugment(tiny, c, new Rng(seed)).data;
      const hit = Object.entries(expected).find(([, f]) => out.every((v, i) => v === f(tiny.data[i]!)));
      expect(hit, `seed ${seed}`).toBeDefined();
      counts[hit![0]]!++;
    }
    return counts;
  };

  test('Invert, PosterizeIncreasing, SolarizeIncreasing and SolarizeAdd at magnitude 9 match a hand computation, half the time', () => {
    const same = (v: number) => v;
    const cases: [OpName, (v: number) => number][] = [
      ['Invert', (v) => 255 - v],
      ['PosterizeIncreasing', (v) => v & 0x80], // 4 − ⌊9/10·4⌋ = 1 bit kept
      ['SolarizeIncreasing', (v) => (v < 26 ? v : 255 - v)], // threshold 256 − ⌊9/10·256⌋ = 26
      ['SolarizeAdd', (v) => (v < 128 ? Math.min(255, v + 99) : v)], // ⌊9/10·110⌋ = 99
    ];
    for (const [op, f] of cases) {
      const { applied, untouched } = outcomes(only(op), { applied: f, untouched: same });
      expect(applied, op).toBeGreaterThan(70);
      expect(untouched, op).toBeGreaterThan(70);
    }
  });

  test('magnitude noise (mstd): a magnitude drawn above 10 is clipped there, so posterize sometimes keeps no bit', () => {
    const { one, none, untouched } = outcomes(only('PosterizeIncreasing', 0.5), {
      one: (v) => v & 0x80,
      none: () => 0,
      untouched: (v) => v,
    });
    expect(one).toBeGreaterThan(none!);
    expect(none).toBeGreaterThan(0);
    expect(untouched).toBeGreaterThan(70);
  });

  test('the fine-tuning transform is a function of the seed', () => {
    const augment = finetuneAugment({ randAugment: 'rand-m9-mstd0.5-inc1', reprob: 0.25 })!;
    const img = image(16, 16, (x, y, c) => (x * 16 + y * 3 + c * 60) % 256);
    const run = (seed: number) => Array.from({ length: 8 }, (_, k) => Array.from(augment(img, new Rng(seedFor(seed, k))).data));
    expect(run(1)).toEqual(run(1));
    expect(run(2)).not.toEqual(run(1));
    expect(run(1).filter((d) => d.some((v, i) => v !== img.data[i])).length).toBeGreaterThan(2);
    expect(finetuneAugment({ randAugment: null, reprob: 0 })).toBeUndefined();
  });
});

describe('random erasing (pixel mode)', () => {
  const flat = image(64, 48, (_, __, c) => [120, 130, 140][c]!);

  test('fills exactly one rectangle of 2–33% of the image with per-pixel, per-channel N(0, 1) in normalised space', () => {
    for (let seed = 0; seed < 20; seed++) {
      const out = randomErase(flat, 1, new Rng(seed));
      const changed = (x: number, y: number) => [0, 1, 2].some((c) => out.data[(y * 64 + x) * 3 + c] !== flat.data[(y * 64 + x) * 3 + c]);
      const xs: number[] = [];
      const ys: number[] = [];
      for (let y = 0; y < 48; y++)
        for (let x = 0; x < 64; x++)
          if (changed(x, y)) {
            xs.push(x);
            ys.push(y);
          }
      const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
      const area = (x1 - x0 + 1) * (y1 - y0 + 1);
      expect(xs.length, `seed ${seed}: the changed pixels fill their bounding box`).toBe(area);
      expect(area / (64 * 48)).toBeGreaterThan(0.015);
      expect(area / (64 * 48)).toBeLessThan(0.35);
      const X = tf.tidy(() => normalize(toTensor([out])).dataSync());
      const z = [];
      for (let y = y0; y <= y1; y++) for (let x = x0; x <= x1; x++) for (let c = 0; c < 3; c++) z.push(X[(y * 64 + x) * 3 + c]!);
      const mean = z.reduce((a, b) => a + b, 0) / z.length;
      const sd = Math.sqrt(z.reduce((a, b) => a + (b - mean) ** 2, 0) / z.length);
      expect(Math.abs(mean)).toBeLessThan(0.35);
      expect(sd).toBeGreaterThan(0.75);
      expect(sd).toBeLessThan(1.25);
      expect(new Set(z).size).toBe(z.length);
    }
  });

  test('erases with probability p', () => {
    const erased = Array.from({ length: 400 }, (_, s) => randomErase(flat, 0.25, new Rng(s)) !== flat).filter(Boolean).length;
    expect(erased / 400).toBeGreaterThan(0.19);
    expect(erased / 400).toBeLessThan(0.31);
  });
});

describe('Mixup and CutMix (timm, batch mode)', () => {
  const batch = [0, 1, 2, 3].map((b) => image(10, 8, (x, y, c) => (b * 60 + x * 7 + y * 5 + c) % 256));
  const labels = [0, 1, 2, 0];
  const f = parseConfig(FinetuneConfigSchema, { smoothing: 0.1 });

  test('CutMix pastes one box of the mirrored image and weighs the targets by the area kept', () => {
    for (let seed = 0; seed < 10; seed++) {
      const { mixed, targets } = mixBatch(batch, labels, 3, { ...f, mixup: 0, cutmix: 1 }, new Rng(seed));
      const pasted = Array.from({ length: 80 }, (_, i) => batch[0]!.data[i * 3] !== mixed[0]!.data[i * 3]);
      mixed[0]!.data.forEach((v, i) => expect(v).toBe(pasted[Math.floor(i / 3)] ? batch[3]!.data[i] : batch[0]!.data[i]));
      const lambda = 1 - pasted.filter(Boolean).length / 80;
      const smooth = (y: number) => [0, 1, 2].map((k) => (k === y ? 0.9 : 0) + 0.1 / 3);
      const expected = smooth(0).map((a, k) => lambda * a + (1 - lambda) * smooth(0)[k]!); // image 3 is class 0 too
      expect(Array.from(targets.subarray(0, 3))).toEqual(expected.map((v) => expect.closeTo(v, 6)));
      const t1 = Array.from(targets.subarray(3, 6));
      expect(t1[1]! + t1[2]!).toBeCloseTo(1 - 0.1 / 3, 6);
      expect(t1[1]).toBeCloseTo(lambda * 0.9 + 0.1 / 3, 6);
    }
  });

  test('Mixup blends each image with its mirror by the λ of its targets', () => {
    const { mixed, targets } = mixBatch(batch, labels, 3, { ...f, mixup: 0.8, cutmix: 0 }, new Rng(4));
    const lambda = (targets[3 + 1]! - 0.1 / 3) / 0.9; // image 1 (class 1) mixed with image 2 (class 2)
    mixed[1]!.data.forEach((v, i) => expect(v).toBeCloseTo(lambda * batch[1]!.data[i]! + (1 - lambda) * batch[2]!.data[i]!, 3));
  });
});
