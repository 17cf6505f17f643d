import * as tf from '@tensorflow/tfjs';

/** An RGB image, row-major `(y, x, channel)`, values on the 0–255 scale (not necessarily integers). */
export interface RgbImage {
  height: number;
  width: number;
  data: Float32Array | Uint8Array;
}

/** A decoded 8-bit image, as sharp produces it (core/data/decode.ts). */
export interface Rgb8 extends RgbImage {
  data: Uint8Array;
}

export const IMAGENET_MEAN = [0.485, 0.456, 0.406] as const;
export const IMAGENET_STD = [0.229, 0.224, 0.225] as const;

/** Images of one size as one `[B, H, W, 3]` tensor on the 0–255 scale: the batch's single upload. */
export function toTensor(images: RgbImage[]): tf.Tensor4D {
  const { height: H, width: W } = images[0]!;
  const data = new Float32Array(images.length * H * W * 3);
  images.forEach((img, b) => {
    if (img.height !== H || img.width !== W) throw new Error(`image ${b} is ${img.width}×${img.height}, expected ${W}×${H}`);
    data.set(img.data, b * H * W * 3);
  });
  return tf.tensor4d(data, [images.length, H, W, 3]);
}

/** The encoder's input (docs/method.md#preprocessing): `(u/255 − mean) / std` per channel. `[B, H, W, 3]`. */
export function normalize(x: tf.Tensor4D): tf.Tensor4D {
  return tf.tidy(() => tf.div(tf.sub(tf.div(x, 255), IMAGENET_MEAN), IMAGENET_STD));
}

/**
 * Non-overlapping `c × c` tokens of `[B, H, W, C]` in raster order, features ordered `(dy, dx, channel)`:
 * `[B, ⌊H/c⌋·⌊W/c⌋, c²·C]`. Trailing pixels that do not fill a token are dropped.
 */
export function tokens(x: tf.Tensor4D, c: number): tf.Tensor3D {
  const [B, H, W, C] = x.shape;
  const [gh, gw] = [Math.floor(H / c), Math.floor(W / c)];
  return tf.tidy(() => {
    const cropped = gh * c === H && gw * c === W ? x : tf.slice(x, [0, 0, 0, 0], [B, gh * c, gw * c, C]);
    const rows = tf.reshape(cropped, [B * gh, c, gw, c * C]); // [B·gh, dy, gw, (dx, ch)]
    return tf.reshape(tf.transpose(rows, [0, 2, 1, 3]), [B, gh * gw, c * c * C]);
  });
}
