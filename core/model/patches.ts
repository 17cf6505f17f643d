import * as tf from '@tensorflow/tfjs';
import { tokens } from '../image.js';

/**
 * Patches of normalised images `[B, H, W, 3]` flattened `(c, dy, dx)` like the patch conv's weight, so the patch
 * embedding is a matmul (docs/tfjs.md#kernels-missing-on-wasm): `[B·L, 3p²]`, raster order per image.
 */
export function patchRows(x: tf.Tensor4D, p: number): tf.Tensor2D {
  return tf.tidy(() => {
    const t = tokens(x, p); // [B, L, (dy, dx, c)]
    const [B, L] = t.shape;
    return tf.reshape(tf.transpose(tf.reshape(t, [B * L, p * p, 3]), [0, 2, 1]), [B * L, 3 * p * p]);
  });
}

/**
 * The visible patches `idsKeep [B, nKeep]` of each image in noise order, and their positions from the table
 * `[1 + L, D]` (row 0 is the class token's): `patches [B·nKeep, 3p²]`, `pos [B·nKeep, D]`. Neither needs a
 * gradient; gather has none on wasm.
 */
export function visiblePatches(x: tf.Tensor4D, p: number, posTable: tf.Tensor, idsKeep: Int32Array) {
  return tf.tidy(() => {
    const all = patchRows(x, p);
    const L = all.shape[0] / x.shape[0];
    const nKeep = idsKeep.length / x.shape[0];
    const rows = tf.tensor1d(
      Int32Array.from(idsKeep, (id, i) => Math.floor(i / nKeep) * L + id),
      'int32',
    );
    const ids = tf.tensor1d(
      Int32Array.from(idsKeep, (id) => 1 + id),
      'int32',
    );
    const D = posTable.shape.at(-1)!;
    return { patches: tf.gather(all, rows) as tf.Tensor2D, pos: tf.gather(tf.reshape(posTable, [-1, D]), ids) as tf.Tensor2D };
  });
}

/** Every patch of each image with its position from the table `[1 + L, D]`: `patches [B·L, 3p²]`, `pos [B·L, D]`. */
export function allPatches(x: tf.Tensor4D, p: number, posTable: tf.Tensor) {
  return tf.tidy(() => {
    const patches = patchRows(x, p);
    const D = posTable.shape.at(-1)!;
    const L = patches.shape[0] / x.shape[0];
    const table = tf.slice(tf.reshape(posTable, [1 + L, D]), [1, 0], [L, D]);
    return { patches, pos: tf.tile(table, [x.shape[0], 1]) as tf.Tensor2D };
  });
}
