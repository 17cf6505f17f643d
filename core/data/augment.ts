import sharp from 'sharp';
import type { Rng } from '../random.js';
import { IMAGENET_MEAN, IMAGENET_STD, type Rgb8, type RgbImage } from '../image.js';
import { parseRandAugment, randAugment } from './randaugment.js';

export interface Crop {
  left: number;
  top: number;
  width: number;
  height: number;
  flip: boolean;
}

export interface Size {
  width: number;
  height: number;
}

/** RandomResizedCrop's aspect-ratio range (width / height), log-uniform. */
const RATIO = [3 / 4, 4 / 3] as const;

/**
 * torchvision's `RandomResizedCrop.get_params` (docs/method.md#preprocessing), in the coordinates of the W×H image
 * as decoded: area fraction uniform in `scale`, aspect ratio log-uniform in [3/4, 4/3], sides rounded as Python's
 * `round`, ten tries, then a centre crop clamped to the ratio range; flip with p = 0.5.
 */
export function randomCrop(rng: Rng, W: number, H: number, scale: readonly [number, number] = [0.2, 1]): Crop {
  const flip = (crop: Omit<Crop, 'flip'>): Crop => ({ ...crop, flip: rng.next() < 0.5 });
  const area = W * H;
  for (let i = 0; i < 10; i++) {
    const target = area * rng.uniform(scale[0], scale[1]);
    const aspect = Math.exp(rng.uniform(Math.log(RATIO[0]), Math.log(RATIO[1])));
    const width = roundHalfEven(Math.sqrt(target * aspect));
    const height = roundHalfEven(Math.sqrt(target / aspect));
    if (width > 0 && width <= W && height > 0 && height <= H) {
      const top = Math.floor(rng.next() * (H - height + 1));
      const left = Math.floor(rng.next() * (W - width + 1));
      return flip({ left, top, width, height });
    }
  }
  const inRatio = W / H;
  const [width, height] =
    inRatio < RATIO[0] ? [W, roundHalfEven(W / RATIO[0])] : inRatio > RATIO[1] ? [roundHalfEven(H * RATIO[1]), H] : [W, H];
  return flip({ left: Math.floor((W - width) / 2), top: Math.floor((H - height) / 2), width, height });
}

/** Python's `round`: halves go to the even neighbour. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Pixels a cached crop source may hold (about 4.2 MP, 12.6 MB as raw RGB); see docs/method.md#preprocessing. */
export const MAX_CROP_SOURCE_PIXELS = 2 ** 22;

/** Random crops to `imgSize²` with area fraction from `minScale`: what a cached crop source must serve. */
export interface CropSource {
  imgSize: number;
  minScale: number;
}

/**
 * The size of the copy of a W×H image that random crops are cut from (docs/method.md#preprocessing): the shortest
 * side of a crop of an A-pixel image is √(minScale·A·3/4), so a copy of A ≥ (imgSize + 2)² / (minScale·3/4) pixels
 * upsamples none (the 2 px absorb the rounding of the box); the centre-crop fallback also needs a shorter side of
 * imgSize + 2. Never larger than the image itself nor than MAX_CROP_SOURCE_PIXELS.
 */
export function cropSourceSize(W: number, H: number, { imgSize, minScale }: CropSource): Size {
  const side = imgSize + 2;
  const needed = Math.max(side / Math.min(W, H), side / Math.sqrt(minScale * Math.min(RATIO[0], 1 / RATIO[1]) * W * H));
  const k = Math.min(1, needed, Math.sqrt(MAX_CROP_SOURCE_PIXELS / (W * H)));
  return { width: Math.min(W, Math.ceil(W * k)), height: Math.min(H, Math.ceil(H * k)) };
}

/** A box in the coordinates of an image of size `from`, moved onto its resized copy of size `to`, each edge rounded. */
export function scaleCrop(c: Crop, from: Size, to: Size): Crop {
  const [kx, ky] = [to.width / from.width, to.height / from.height];
  const [left, top] = [Math.round(c.left * kx), Math.round(c.top * ky)];
  const width = Math.round((c.left + c.width) * kx) - left;
  return { left, top, width, height: Math.round((c.top + c.height) * ky) - top, flip: c.flip };
}

/** Crops, resizes to `size²` with bicubic (Catmull-Rom, as PIL's bicubic) or bilinear, and optionally flips. */
export async function applyCrop(img: Rgb8, c: Crop, size: number, kernel: 'cubic' | 'linear' = 'cubic'): Promise<Rgb8> {
  let s = sharp(img.data, { raw: { width: img.width, height: img.height, channels: 3 } })
    .extract({ left: c.left, top: c.top, width: c.width, height: c.height })
    .resize(size, size, { fit: 'fill', kernel });
  if (c.flip) s = s.flop();
  const data = await s.raw().toBuffer();
  return { width: size, height: size, data: new Uint8Array(data.buffer, data.byteOffset, data.length) };
}

/**
 * timm's RandomErasing in `pixel` mode with one box (docs/method.md#fine-tuning): with probability `p`, a rectangle
 * of area fraction U(0.02, 1/3) and aspect log-uniform in [0.3, 1/0.3] (ten tries to fit) gets fresh N(0, 1)
 * noise per pixel and channel in the normalised space. The result stays on the 0–255 scale, so the encoder's
 * normalisation gives those draws back.
 */
export function randomErase(img: RgbImage, p: number, rng: Rng): RgbImage {
  if (rng.next() >= p) return img;
  const { width: W, height: H } = img;
  for (let i = 0; i < 10; i++) {
    const area = rng.uniform(0.02, 1 / 3) * W * H;
    const aspect = Math.exp(rng.uniform(Math.log(0.3), Math.log(1 / 0.3)));
    const h = Math.round(Math.sqrt(area * aspect));
    const w = Math.round(Math.sqrt(area / aspect));
    if (w >= W || h >= H) continue;
    const top = Math.floor(rng.next() * (H - h + 1));
    const left = Math.floor(rng.next() * (W - w + 1));
    const data = Float32Array.from(img.data);
    for (let c = 0; c < 3; c++)
      for (let y = top; y < top + h; y++)
        for (let x = left; x < left + w; x++) data[(y * W + x) * 3 + c] = 255 * (IMAGENET_STD[c]! * rng.normal() + IMAGENET_MEAN[c]!);
    return { width: W, height: H, data };
  }
  return img;
}

/** The fine-tuning transform after crop and flip, as timm's: RandAugment (timm's config string; empty = off), then random erasing. */
export function finetuneAugment(o: { randAugment: string | null; reprob: number }): ((img: Rgb8, rng: Rng) => RgbImage) | undefined {
  const ra = o.randAugment ? parseRandAugment(o.randAugment) : undefined;
  if (!ra && o.reprob <= 0) return undefined;
  return (img, rng) => {
    const augmented = ra ? randAugment(img, ra, rng) : img;
    return o.reprob > 0 ? randomErase(augmented, o.reprob, rng) : augmented;
  };
}
