import type { Rng } from '../random.js';
import { IMAGENET_MEAN, type Rgb8 } from '../image.js';

/**
 * timm's RandAugment (docs/method.md#fine-tuning) on 8-bit RGB, op for op as timm 0.3.2 runs them on PIL images:
 * `layers` ops drawn with replacement, each applied with probability 0.5 at a magnitude drawn from
 * N(magnitude, magnitudeStd²) clipped to [0, 10].
 */
export interface RandAugmentConfig {
  magnitude: number;
  layers: number;
  magnitudeStd: number;
  ops: readonly OpName[];
}

const MAX_LEVEL = 10;

/** timm's `_RAND_TRANSFORMS` (`inc0`) and `_RAND_INCREASING_TRANSFORMS` (`inc1`), in timm's order. */
export const RAND_TRANSFORMS = [
  'AutoContrast',
  'Equalize',
  'Invert',
  'Rotate',
  'Posterize',
  'Solarize',
  'SolarizeAdd',
  'Color',
  'Contrast',
  'Brightness',
  'Sharpness',
  'ShearX',
  'ShearY',
  'TranslateXRel',
  'TranslateYRel',
] as const;
export const RAND_INCREASING_TRANSFORMS = [
  'AutoContrast',
  'Equalize',
  'Invert',
  'Rotate',
  'PosterizeIncreasing',
  'SolarizeIncreasing',
  'SolarizeAdd',
  'ColorIncreasing',
  'ContrastIncreasing',
  'BrightnessIncreasing',
  'SharpnessIncreasing',
  'ShearX',
  'ShearY',
  'TranslateXRel',
  'TranslateYRel',
] as const;
export type OpName = (typeof RAND_TRANSFORMS)[number] | (typeof RAND_INCREASING_TRANSFORMS)[number];

/** Parses timm's config string, e.g. `rand-m9-mstd0.5-inc1`; anything timm would not read the same way is an error. */
export function parseRandAugment(s: string): RandAugmentConfig {
  const [head, ...sections] = s.split('-');
  if (head !== 'rand') throw new Error(`"${s}": expected timm's form rand-m9-mstd0.5-inc1 (sections m, n, mstd, inc)`);
  const c = { magnitude: MAX_LEVEL, layers: 2, magnitudeStd: 0, increasing: false };
  const seen = new Set<string>();
  for (const section of sections) {
    const [, key, val] = /^([a-z]+)(\d.*)$/.exec(section) ?? [];
    const bad = (what: string) => new Error(`"${s}": section "${section}" ${what}`);
    if (!key || !val) throw bad('is not a key followed by a number, as m9');
    if (seen.has(key)) throw bad('repeats a key');
    seen.add(key);
    if (key === 'm' && /^\d+$/.test(val)) c.magnitude = Number(val);
    else if (key === 'n' && /^[1-9]\d?$/.test(val)) c.layers = Number(val);
    else if (key === 'mstd' && /^\d+(\.\d+)?$/.test(val)) c.magnitudeStd = Number(val);
    else if (key === 'inc' && /^[01]$/.test(val)) c.increasing = val === '1';
    else if (['m', 'n', 'mstd', 'inc'].includes(key)) throw bad(`has a bad value (m: integer, n: 1–99, mstd: ≥ 0, inc: 0 or 1)`);
    else throw bad(`has an unknown key "${key}" (known: m, n, mstd, inc)`);
  }
  const { increasing, ...rest } = c;
  return { ...rest, ops: increasing ? RAND_INCREASING_TRANSFORMS : RAND_TRANSFORMS };
}

/** Applies RandAugment to one image, drawing every choice from `rng`. */
export function randAugment(img: Rgb8, c: RandAugmentConfig, rng: Rng): Rgb8 {
  const picks = Array.from({ length: c.layers }, () => c.ops[Math.floor(rng.next() * c.ops.length)]!);
  for (const name of picks) {
    if (rng.next() > 0.5) continue;
    const drawn = c.magnitudeStd > 0 ? c.magnitude + c.magnitudeStd * rng.normal() : c.magnitude;
    const op = OPS[name];
    img = op.apply(img, op.level?.(Math.min(MAX_LEVEL, Math.max(0, drawn)), rng) ?? 0);
  }
  return img;
}

/** An op: timm's level → argument mapping (which may flip the sign with p = 0.5), and the PIL operation. */
interface Op {
  level?: (m: number, rng: Rng) => number;
  apply: (img: Rgb8, arg: number) => Rgb8;
}

const negate = (v: number, rng: Rng) => (rng.next() > 0.5 ? -v : v);
const enhanceLevel = (m: number) => (m / MAX_LEVEL) * 1.8 + 0.1;
const enhanceIncreasing = (m: number, rng: Rng) => 1 + negate((m / MAX_LEVEL) * 0.9, rng);
const posterizeBits = (m: number) => Math.trunc((m / MAX_LEVEL) * 4);
const solarizeThreshold = (m: number) => Math.trunc((m / MAX_LEVEL) * 256);
const shear = (m: number, rng: Rng) => negate((m / MAX_LEVEL) * 0.3, rng);
const translatePct = (m: number, rng: Rng) => negate((m / MAX_LEVEL) * 0.45, rng);

export const OPS: Record<OpName, Op> = {
  AutoContrast: { apply: autoContrast },
  Equalize: { apply: equalize },
  Invert: { apply: (img) => lut(img, () => (v) => 255 - v) },
  Rotate: { level: (m, rng) => negate((m / MAX_LEVEL) * 30, rng), apply: rotate },
  Posterize: { level: posterizeBits, apply: posterize },
  PosterizeIncreasing: { level: (m) => 4 - posterizeBits(m), apply: posterize },
  Solarize: { level: solarizeThreshold, apply: solarize },
  SolarizeIncreasing: { level: (m) => 256 - solarizeThreshold(m), apply: solarize },
  SolarizeAdd: {
    level: (m) => Math.trunc((m / MAX_LEVEL) * 110),
    apply: (img, add) => lut(img, () => (v) => (v < 128 ? Math.min(255, v + add) : v)),
  },
  Color: { level: enhanceLevel, apply: color },
  ColorIncreasing: { level: enhanceIncreasing, apply: color },
  Contrast: { level: enhanceLevel, apply: contrast },
  ContrastIncreasing: { level: enhanceIncreasing, apply: contrast },
  Brightness: { level: enhanceLevel, apply: (img, f) => blend(new Uint8Array(img.data.length), img, f) },
  BrightnessIncreasing: { level: enhanceIncreasing, apply: (img, f) => blend(new Uint8Array(img.data.length), img, f) },
  Sharpness: { level: enhanceLevel, apply: sharpness },
  SharpnessIncreasing: { level: enhanceIncreasing, apply: sharpness },
  ShearX: { level: shear, apply: (img, f) => affine(img, [1, f, 0, 0, 1, 0]) },
  ShearY: { level: shear, apply: (img, f) => affine(img, [1, 0, 0, f, 1, 0]) },
  TranslateXRel: { level: translatePct, apply: (img, pct) => affine(img, [1, 0, pct * img.width, 0, 1, 0]) },
  TranslateYRel: { level: translatePct, apply: (img, pct) => affine(img, [1, 0, 0, 0, 1, pct * img.height]) },
};

/** Per-channel look-up: `table(c)` maps a value of channel c. */
function lut(img: Rgb8, table: (c: number) => (v: number) => number): Rgb8 {
  const maps = [0, 1, 2].map((c) => Uint8Array.from({ length: 256 }, (_, v) => v).map(table(c)));
  return { ...img, data: img.data.map((v, i) => maps[i % 3]![v]!) };
}

function histograms(img: Rgb8): Uint32Array[] {
  const h = [0, 1, 2].map(() => new Uint32Array(256));
  img.data.forEach((v, i) => h[i % 3]![v]!++);
  return h;
}

/** PIL's `ImageOps.autocontrast` (no cutoff): each channel's range stretched to 0–255, truncating. */
function autoContrast(img: Rgb8): Rgb8 {
  const h = histograms(img);
  return lut(img, (c) => {
    const lo = h[c]!.findIndex((n) => n > 0);
    const hi = h[c]!.findLastIndex((n) => n > 0);
    if (hi <= lo) return (v) => v;
    const scale = 255 / (hi - lo);
    return (v) => Math.min(255, Math.max(0, Math.trunc(v * scale - lo * scale)));
  });
}

/** PIL's `ImageOps.equalize`: each channel through its cumulative histogram, in steps of (n − top bin) / 255. */
function equalize(img: Rgb8): Rgb8 {
  const h = histograms(img);
  return lut(img, (c) => {
    const used = [...h[c]!].filter((n) => n > 0);
    if (used.length <= 1) return (v) => v;
    const step = Math.floor((used.reduce((a, b) => a + b, 0) - used.at(-1)!) / 255);
    if (step === 0) return (v) => v;
    const table = new Uint8Array(256);
    for (let i = 0, n = Math.floor(step / 2); i < 256; n += h[c]![i]!, i++) table[i] = Math.min(255, Math.floor(n / step));
    return (v) => table[v]!;
  });
}

/** PIL's `ImageOps.posterize`: keep the top `bits` bits (timm leaves the image as it is from 8 bits on). */
function posterize(img: Rgb8, bits: number): Rgb8 {
  return bits >= 8 ? img : lut(img, () => (v) => v & ~((1 << (8 - bits)) - 1));
}

/** PIL's `ImageOps.solarize`: values from `threshold` up are inverted. */
function solarize(img: Rgb8, threshold: number): Rgb8 {
  return lut(img, () => (v) => (v < threshold ? v : 255 - v));
}

/** PIL's `Image.blend(degenerate, img, factor)`: float32 arithmetic, truncated and clipped to 0–255. */
function blend(degenerate: Uint8Array, img: Rgb8, factor: number): Rgb8 {
  const a = Math.fround(factor);
  const data = img.data.map((v, i) => {
    const d = degenerate[i]!;
    const t = Math.fround(d + Math.fround(a * (v - d)));
    return t <= 0 ? 0 : t >= 255 ? 255 : Math.trunc(t);
  });
  return { ...img, data };
}

/** PIL's luma, `L = (19595 R + 38470 G + 7471 B + 2¹⁵) >> 16`, per pixel. */
function luma(img: Rgb8): Uint8Array {
  const d = img.data;
  return Uint8Array.from(
    { length: d.length / 3 },
    (_, i) => (d[3 * i]! * 19595 + d[3 * i + 1]! * 38470 + d[3 * i + 2]! * 7471 + 0x8000) >> 16,
  );
}

/** `ImageEnhance.Color`: blend with the image's grey version. */
function color(img: Rgb8, f: number): Rgb8 {
  const l = luma(img);
  return blend(
    img.data.map((_, i) => l[Math.floor(i / 3)]!),
    img,
    f,
  );
}

/** `ImageEnhance.Contrast`: blend with a flat grey at the mean luma, rounded. */
function contrast(img: Rgb8, f: number): Rgb8 {
  const l = luma(img);
  const mean = Math.trunc(l.reduce((a, b) => a + b, 0) / l.length + 0.5);
  return blend(new Uint8Array(img.data.length).fill(mean), img, f);
}

/**
 * `ImageEnhance.Sharpness`: blend with PIL's SMOOTH filter (3×3 kernel [1 1 1; 1 5 1; 1 1 1] / 13 in float32,
 * rounded; the border pixels are left as they are).
 */
function sharpness(img: Rgb8, f: number): Rgb8 {
  const { width: W, height: H, data } = img;
  const smooth = Uint8Array.from(data);
  if (W >= 3 && H >= 3) {
    const [k, k5] = [Math.fround(1 / 13), Math.fround(5 / 13)];
    const row = (i: number, centre: number) =>
      Math.fround(Math.fround(Math.fround(data[i - 3]! * k) + Math.fround(data[i]! * centre)) + Math.fround(data[i + 3]! * k));
    for (let y = 1; y < H - 1; y++)
      for (let x = 1; x < W - 1; x++)
        for (let c = 0; c < 3; c++) {
          const i = (y * W + x) * 3 + c;
          let s = Math.fround(0.5 + row(i + 3 * W, k));
          s = Math.fround(s + row(i, k5));
          s = Math.fround(s + row(i - 3 * W, k));
          smooth[i] = Math.min(255, Math.max(0, Math.trunc(s)));
        }
  }
  return blend(smooth, img, f);
}

/** The fill of uncovered pixels in geometric ops: timm's `img_mean`, the ImageNet mean as 8-bit RGB (124, 116, 104). */
export const FILL = IMAGENET_MEAN.map((m) => Math.min(255, Math.round(255 * m)));

/**
 * PIL's affine `transform` with bilinear sampling (timm 0.3.2 turns the official `InterpolationMode.BICUBIC`
 * into bilinear): output pixel centre (x + ½, y + ½) reads the input at (a·x′ + b·y′ + c, d·x′ + e·y′ + f);
 * outside the input it is {@link FILL}. Neighbours are clamped at the edges and the result truncated, as PIL.
 */
function affine(img: Rgb8, [a, b, c, d, e, f]: readonly [number, number, number, number, number, number]): Rgb8 {
  const { width: W, height: H, data } = img;
  const out = new Uint8Array(data.length);
  for (let y = 0; y < H; y++)
    for (let x = 0; x < W; x++) {
      const o = (y * W + x) * 3;
      const xi = a * (x + 0.5) + b * (y + 0.5) + c;
      const yi = d * (x + 0.5) + e * (y + 0.5) + f;
      if (xi < 0 || xi >= W || yi < 0 || yi >= H) {
        out.set(FILL, o);
        continue;
      }
      const x0 = Math.floor(xi - 0.5);
      const y0 = Math.floor(yi - 0.5);
      const dx = xi - 0.5 - x0;
      const dy = yi - 0.5 - y0;
      const left = Math.max(x0, 0) * 3;
      const right = Math.min(x0 + 1, W - 1) * 3;
      const top = Math.max(y0, 0) * W * 3;
      const below = y0 + 1 < H;
      const bottom = (y0 + 1) * W * 3;
      for (let ch = 0; ch < 3; ch++) {
        const v1 = data[top + left + ch]! + (data[top + right + ch]! - data[top + left + ch]!) * dx;
        const v2 = below ? data[bottom + left + ch]! + (data[bottom + right + ch]! - data[bottom + left + ch]!) * dx : v1;
        out[o + ch] = Math.trunc(v1 + (v2 - v1) * dy);
      }
    }
  return { ...img, data: out };
}

/** PIL's `Image.rotate` (counter-clockwise degrees about the centre, no expand): its rounded inverse matrix, then {@link affine}. */
function rotate(img: Rgb8, degrees: number): Rgb8 {
  const angle = ((degrees % 360) + 360) % 360;
  if (angle === 0) return img;
  const round15 = (v: number) => (Math.sign(v) * Math.round(Math.abs(v) * 1e15)) / 1e15;
  const t = -(angle * (Math.PI / 180));
  const [cos, sin] = [round15(Math.cos(t)), round15(Math.sin(t))];
  const [cx, cy] = [img.width / 2, img.height / 2];
  return affine(img, [cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy]);
}
