import sharp from 'sharp';
import type { Rgb8 } from '../targets/image.js';
import { cropSourceSize, type CropSource, type Size } from './augment.js';
import type { DecodeCache } from './cache.js';

/** timm's evaluation crop fraction: the shorter side goes to size / 0.875, then the centre size² is kept. */
export const CROP_PCT = 0.875;

/** A decoded image and the size it had before any resize (EXIF orientation applied). */
export interface Decoded extends Rgb8 {
  original: Size;
}

/** Decodes with EXIF orientation applied, alpha dropped and grey expanded to RGB, resized (bicubic) as `resize` asks. */
async function decode(abs: string, resize: (original: Size) => sharp.ResizeOptions | undefined): Promise<Decoded> {
  const input = sharp(abs, { failOn: 'none' });
  const { width, height } = (await input.metadata()).autoOrient;
  const options = resize({ width, height });
  const oriented = input.rotate();
  const { data, info } = await (options ? oriented.resize({ kernel: 'cubic', ...options }) : oriented)
    .removeAlpha()
    .toColourspace('srgb')
    .raw()
    .toBuffer({ resolveWithObject: true });
  const img = { width: info.width, height: info.height, data: new Uint8Array(data.buffer, data.byteOffset, data.length) };
  return { ...img, original: { width, height } };
}

/** The image with its shorter side scaled to `side`, enlarging small ones (the evaluation transform's first step). */
export const decodeShorterSide = (abs: string, side: number): Promise<Decoded> =>
  decode(abs, () => ({ width: side, height: side, fit: 'outside', withoutEnlargement: false }));

/** The copy of the image that random crops are cut from: shrunk only as far as `cropSourceSize` allows. */
export const decodeCropSource = (abs: string, crops: CropSource): Promise<Decoded> =>
  decode(abs, (o) => {
    const { width, height } = cropSourceSize(o.width, o.height, crops);
    return width === o.width && height === o.height ? undefined : { width, height, fit: 'fill' };
  });

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
