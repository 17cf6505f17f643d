import { normalize, type RgbImage } from '../targets/image.js';

/**
 * Patches `ids` of each image, normalised and flattened `(c, dy, dx)` like the patch conv's weight: `[B·n, 3p²]`.
 * Done on the host: it needs no gradient, and tfjs's gather has no gradient on wasm (docs/tfjs.md#kernels-missing-on-wasm).
 */
export function patchRows(images: RgbImage[], ids: (b: number) => ArrayLike<number>, p: number): Float32Array {
  const n = ids(0).length;
  const P = 3 * p * p;
  const patches = new Float32Array(images.length * n * P);
  images.forEach((img, b) => {
    const X = normalize(img);
    const g = img.width / p;
    const row = ids(b);
    for (let k = 0; k < n; k++) {
      const id = row[k]!;
      const [ty, tx] = [Math.floor(id / g), id % g];
      const out = patches.subarray((b * n + k) * P);
      for (let c = 0; c < 3; c++)
        for (let dy = 0; dy < p; dy++)
          for (let dx = 0; dx < p; dx++) out[(c * p + dy) * p + dx] = X[((ty * p + dy) * img.width + tx * p + dx) * 3 + c]!;
    }
  });
  return patches;
}

/** {@link patchRows} with their fixed positions from the host table `[1 + L, D]`: `patches [B·n, 3p²]`, `pos [B·n, D]`. */
export function gatherPatches(images: RgbImage[], ids: (b: number) => ArrayLike<number>, p: number, posTable: Float32Array, D: number) {
  const n = ids(0).length;
  const pos = new Float32Array(images.length * n * D);
  images.forEach((_, b) => {
    const row = ids(b);
    for (let k = 0; k < n; k++) pos.set(posTable.subarray((1 + row[k]!) * D, (2 + row[k]!) * D), (b * n + k) * D);
  });
  return { patches: patchRows(images, ids, p), pos };
}
