import { normalize, type RgbImage } from './image.js';

/**
 * Normalized-pixel targets (docs/method.md#normalized-pixel-targets): one token per `p × p` patch in raster order, features ordered
 * `(dy, dx, channel)`; with `normPix` each token is standardised by its own mean and unbiased variance.
 */
export function pixelTargets(img: RgbImage, p: number, normPix: boolean): Float32Array {
  const X = normalize(img);
  const gh = Math.floor(img.height / p);
  const gw = Math.floor(img.width / p);
  const F = 3 * p * p;
  const out = new Float32Array(gh * gw * F);
  for (let ty = 0; ty < gh; ty++) {
    for (let tx = 0; tx < gw; tx++) {
      const token = out.subarray((ty * gw + tx) * F, (ty * gw + tx + 1) * F);
      for (let dy = 0; dy < p; dy++) {
        const src = ((ty * p + dy) * img.width + tx * p) * 3;
        token.set(X.subarray(src, src + 3 * p), dy * 3 * p);
      }
      if (normPix) standardize(token);
    }
  }
  return out;
}

function standardize(v: Float32Array): void {
  let mean = 0;
  for (const x of v) mean += x;
  mean /= v.length;
  let ss = 0;
  for (const x of v) ss += (x - mean) ** 2;
  const std = Math.sqrt(ss / (v.length - 1) + 1e-6);
  for (let i = 0; i < v.length; i++) v[i] = (v[i]! - mean) / std;
}
