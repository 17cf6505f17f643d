import type { Rgb8 } from '../image.js';
import type { DecodeCache } from './cache.js';
import { decodeShorterSide } from './decode.js';

/** timm's evaluation crop fraction: the shorter side goes to size / 0.875, then the centre size² is kept. */
export const CROP_PCT = 0.875;

/** The centre `size × size` of an image at least that large. */
export function centerCrop(img: Rgb8, size: number): Rgb8 {
  const left = Math.floor((img.width - size) / 2);
  const top = Math.floor((img.height - size) / 2);
  const data = new Uint8Array(size * size * 3);
  for (let y = 0; y < size; y++)
    data.set(img.data.subarray(((top + y) * img.width + left) * 3, ((top + y) * img.width + left + size) * 3), y * size * 3);
  return { width: size, height: size, data };
}

/**
 * The one evaluation transform (timm's, with crop_pct 0.875 and bicubic), used for validation, previews,
 * features and attention analysis; decodes through the cache when given one.
 */
export async function evalImage(abs: string, size: number, cached?: { cache: DecodeCache; hash: string }): Promise<Rgb8> {
  const side = Math.round(size / CROP_PCT);
  const img = cached ? await cached.cache.get(abs, cached.hash, side) : await decodeShorterSide(abs, side);
  return centerCrop(img, size);
}
