/** An RGB image, row-major `(y, x, channel)`, values on the 0–255 scale (not necessarily integers). */
export interface RgbImage {
  height: number;
  width: number;
  data: Float32Array | Uint8Array;
}

/** A decoded 8-bit image, as sharp produces it. */
export interface Rgb8 extends RgbImage {
  data: Uint8Array;
}

export const IMAGENET_MEAN = [0.485, 0.456, 0.406] as const;
export const IMAGENET_STD = [0.229, 0.224, 0.225] as const;

/** The encoder's input (docs/method.md#preprocessing): `(u/255 − mean) / std` per channel, in float32, same `(y, x, c)` layout. */
export function normalize(img: RgbImage): Float32Array {
  const out = new Float32Array(img.data.length);
  for (let i = 0; i < out.length; i++) {
    const c = i % 3;
    out[i] = (Math.fround(img.data[i]! / 255) - IMAGENET_MEAN[c]!) / IMAGENET_STD[c]!;
  }
  return out;
}

/** Decodes an image file to RGB as stored (no resize, no rotation); alpha dropped, grey expanded. */
export async function readRgb(file: string): Promise<Rgb8> {
  const { default: sharp } = await import('sharp');
  try {
    const { data, info } = await sharp(file).removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels, expected RGB`);
    return { height: info.height, width: info.width, data: new Uint8Array(data.buffer, data.byteOffset, data.length) };
  } catch (err) {
    throw new Error(`${file}: cannot read as an image: ${(err as Error).message}`);
  }
}
