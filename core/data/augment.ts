import sharp from 'sharp';
import type { Rng } from '../random.js';
import type { Rgb8 } from '../targets/image.js';

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

/** Crops, resizes to `size²` with bicubic (Catmull-Rom, as PIL's bicubic) and optionally flips. */
export async function applyCrop(img: Rgb8, c: Crop, size: number): Promise<Rgb8> {
  let s = sharp(img.data, { raw: { width: img.width, height: img.height, channels: 3 } })
    .extract({ left: c.left, top: c.top, width: c.width, height: c.height })
    .resize(size, size, { fit: 'fill', kernel: 'cubic' });
  if (c.flip) s = s.flop();
  const data = await s.raw().toBuffer();
  return { width: size, height: size, data: new Uint8Array(data.buffer, data.byteOffset, data.length) };
}
