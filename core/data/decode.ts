import sharp from 'sharp';
import type { Rgb8 } from '../image.js';
import { cropSourceSize, type CropSource, type Size } from './augment.js';

// Every image file the app reads is opened with sharp here. The indexer is the gate of training data (readHeader, verify):
// it rejects what does not fully decode, so the other decodes tolerate warnings (failOn 'none') under sharp's own
// pixel limit, and their errors name the file. Pixels come out as 8-bit sRGB, alpha dropped and grey expanded.

/** A decoded image and the size it had before any resize (EXIF orientation applied). */
export interface Decoded extends Rgb8 {
  original: Size;
}

const open = (abs: string) => sharp(abs, { failOn: 'none' });

/** One image file that could not be read: missing, unreadable or undecodable (as opposed to a failure of the reader). */
export class UnreadableImageError extends Error {
  constructor(
    readonly path: string,
    readonly reason: string,
  ) {
    super(`${path}: cannot read as an image: ${reason}`);
    this.name = 'UnreadableImageError';
  }
}

async function naming<T>(abs: string, read: () => Promise<T>): Promise<T> {
  try {
    return await read();
  } catch (err) {
    throw new UnreadableImageError(abs, (err as Error).message);
  }
}

async function rgb(s: sharp.Sharp): Promise<Rgb8> {
  const { data, info } = await s.removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
  if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels, expected RGB`);
  return { width: info.width, height: info.height, data: new Uint8Array(data.buffer, data.byteOffset, data.length) };
}

/** Decodes with EXIF orientation applied, resized (bicubic) as `resize` asks given the oriented size. */
const decode = (abs: string, resize: (original: Size) => sharp.ResizeOptions | undefined): Promise<Decoded> =>
  naming(abs, async () => {
    const input = open(abs);
    const { width, height } = (await input.metadata()).autoOrient;
    const options = resize({ width, height });
    const oriented = input.rotate();
    const img = await rgb(options ? oriented.resize({ kernel: 'cubic', ...options }) : oriented);
    return { ...img, original: { width, height } };
  });

/** The image with its shorter side scaled to `side`, enlarging small ones (the evaluation transform's first step). */
export const decodeShorterSide = (abs: string, side: number): Promise<Decoded> =>
  decode(abs, () => ({ width: side, height: side, fit: 'outside', withoutEnlargement: false }));

/** The copy of the image that random crops are cut from: shrunk only as far as `cropSourceSize` allows. */
export const decodeCropSource = (abs: string, crops: CropSource): Promise<Decoded> =>
  decode(abs, (o) => {
    const { width, height } = cropSourceSize(o.width, o.height, crops);
    return width === o.width && height === o.height ? undefined : { width, height, fit: 'fill' };
  });

/** The image as stored: no EXIF rotation, no resize. */
export const decodeAsStored = (abs: string): Promise<Rgb8> => naming(abs, () => rgb(open(abs)));

/** A `side²` JPEG of the image as a data URL, EXIF orientation applied and cropped to cover, or null when it does not decode. */
export const thumbnail = (abs: string, side: number): Promise<string | null> =>
  open(abs)
    .rotate()
    .resize(side, side, { fit: 'cover' })
    .jpeg({ quality: 70 })
    .toBuffer()
    .then((jpeg) => `data:image/jpeg;base64,${jpeg.toString('base64')}`)
    .catch(() => null);

/** A file's format as sharp names it, and its size with EXIF orientation applied. */
export interface ImageHeader extends Size {
  format?: string;
  compression?: string;
}

/** The header of a file's bytes, read without a pixel limit: the indexer rejects a huge image by its size instead. */
export async function readHeader(bytes: Buffer): Promise<ImageHeader> {
  const { format, compression, autoOrient } = await sharp(bytes, { limitInputPixels: false }).metadata();
  return { format, compression, ...autoOrient };
}

/**
 * Decodes all of a file's bytes to find truncated and corrupt data that its header does not show: shrunk while it loads
 * where the image is large, as is where it is small (there a resize costs more than the decode: 5.9 against 3.6 ms at
 * 256², 18 against 27 at 1024²).
 */
export async function verify(bytes: Buffer, maxPixels: number, pixels: number): Promise<void> {
  const image = sharp(bytes, { failOn: 'truncated', limitInputPixels: maxPixels });
  await (pixels > SHRINK_ABOVE_PIXELS ? image.resize(32, 32, { fit: 'inside' }) : image).raw().toBuffer();
}
const SHRINK_ABOVE_PIXELS = 512 * 512 * 2;
