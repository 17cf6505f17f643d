import * as tf from '@tensorflow/tfjs';
import { tokens } from '../image.js';

/**
 * Normalized-pixel targets (docs/method.md#normalized-pixel-targets) of normalised images `[B, H, W, 3]`:
 * `[B, N, 3p²]`, one token per `p × p` patch in raster order, features ordered `(dy, dx, channel)`; with
 * `normPix` each token is standardised by its own mean and unbiased variance.
 */
export function pixelTargets(x: tf.Tensor4D, p: number, normPix: boolean): tf.Tensor3D {
  return tf.tidy(() => {
    const t = tokens(x, p);
    if (!normPix) return t;
    const n = 3 * p * p;
    const { mean, variance } = tf.moments(t, -1, true);
    const unbiased = tf.mul(variance, n / (n - 1));
    return tf.div(tf.sub(t, mean), tf.sqrt(tf.add(unbiased, 1e-6)));
  });
}
