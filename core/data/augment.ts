import sharp from 'sharp';
import type { Rng } from '../random.js';
import { IMAGENET_MEAN, IMAGENET_STD, type Rgb8, type RgbImage } from '../targets/image.js';
import { parseRandAugment, randAugment } from './randaugment.js';

export interface Crop {
  left: number;
  top: number;
  width: number;
  height: number;
  flip: boolean;
}

/**
 * torchvision's RandomResizedCrop parameters (docs/method.md#preprocessing): area fraction in [0.2, 1], aspect ratio
 * log-uniform in [3/4, 4/3], ten tries, then a centre crop clamped to the ratio range; flip with p = 0.5.
 */
export function randomCrop(
  rng: Rng,
  W: number,
  H: number,
  scale: readonly [number, number] = [0.2, 1],
  ratio: readonly [number, number] = [3 / 4, 4 / 3],
): Crop {
  const flip = (crop: Omit<Crop, 'flip'>): Crop => ({ ...crop, flip: rng.next() < 0.5 });
  const area = W * H;
  for (let i = 0; i < 10; i++) {
    const target = area * rng.uniform(scale[0], scale[1]);
    const aspect = Math.exp(rng.uniform(Math.log(ratio[0]), Math.log(ratio[1])));
    const width = Math.round(Math.sqrt(target * aspect));
    const height = Math.round(Math.sqrt(target / aspect));
    if (width > 0 && width <= W && height > 0 && height <= H) {
      const top = Math.floor(rng.next() * (H - height + 1));
      const left = Math.floor(rng.next() * (W - width + 1));
      return flip({ left, top, width, height });
    }
  }
  const inRatio = W / H;
  const [width, height] = inRatio < ratio[0] ? [W, Math.round(W / ratio[0])] : inRatio > ratio[1] ? [Math.round(H * ratio[1]), H] : [W, H];
  return flip({ left: Math.floor((W - width) / 2), top: Math.floor((H - height) / 2), width, height });
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
