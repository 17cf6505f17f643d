import * as tf from '@tensorflow/tfjs';
import { fusedOrientedMagnitudes, nativeOr } from '../native.js';
import { normalize } from '../image.js';

/**
 * HOG targets (docs/method.md#hog-targets) of images `[B, H, W, 3]` on the 0–255 scale: one `[B, N_k, 3·nbins]`
 * tensor per cell size, cells in raster order, features ordered channel-then-bin. `bias[k]`, the frozen `[b0, b1]`
 * Sobel offsets of cell size k (the official `--hog_bias`, docs/method.md#hog-bias), makes that scale work on the
 * normalised image, where the bias lives. Without one the responses are exact paired differences of the 0–255
 * values, which the result does not otherwise depend on, and all such scales share one histogram pyramid.
 */
export function hog(images: tf.Tensor4D, nbins: number, cells: readonly number[], bias?: readonly (tf.Tensor | null)[]): tf.Tensor3D[] {
  return tf.tidy(() => {
    let normalized: tf.Tensor4D | undefined;
    let plain: Map<number, tf.Tensor4D> | undefined;
    return cells.map((cell, k) => {
      const b = bias?.[k];
      if (b) {
        const oriented = orientedMagnitudes((normalized ??= normalize(images)), nbins, b);
        return l2PerCell(averageCells(new Map([[1, oriented]]), cell), nbins);
      }
      if (!plain) {
        plain = new Map([[1, orientedMagnitudes(images, nbins, null)]]);
        for (const c of cells.filter((_, j) => !bias?.[j]).sort((x, y) => x - y)) averageCells(plain, c);
      }
      return l2PerCell(plain.get(cell)!, nbins);
    });
  });
}

// The Sobel pair as depthwise cross-correlations, filters [3, 3, channel, 1]: c0 = left − right with rows
// weighted 1 2 1, c1 = above − below with columns weighted 1 2 1.
const C0 = [1, 0, -1, 2, 0, -2, 1, 0, -1];
const C1 = [1, 2, 1, 0, 0, 0, -1, -2, -1];
const filter = (k: number[]) =>
  tf.tensor4d(
    k.flatMap((w) => [w, w, w]),
    [3, 3, 3, 1],
  );

/** Each pixel's Sobel magnitude in its unsigned orientation bin: `[nbins·B, H, W, 3]`, bin-major; one native pass when on. */
const orientedMagnitudes = (x: tf.Tensor4D, nbins: number, bias: tf.Tensor | null) =>
  nativeOr(orientedMagnitudesFused, orientedMagnitudesOps)(x, nbins, bias);

function orientedMagnitudesFused(x: tf.Tensor4D, nbins: number, bias: tf.Tensor | null): tf.Tensor4D {
  const { cos, sin } = binEdges(nbins);
  return fusedOrientedMagnitudes(x, tf.tensor2d([cos, sin]), bias ?? tf.zeros([2]), nbins) as tf.Tensor4D;
}

function orientedMagnitudesOps(x: tf.Tensor4D, nbins: number, bias: tf.Tensor | null): tf.Tensor4D {
  const [B, H, W] = x.shape;
  const padded = tf.mirrorPad(
    x,
    [
      [0, 0],
      [1, 1],
      [1, 1],
      [0, 0],
    ],
    'reflect',
  );
  let c0: tf.Tensor = tf.depthwiseConv2d(padded, filter(C0), 1, 'valid'); // [B, H, W, 3]
  let c1: tf.Tensor = tf.depthwiseConv2d(padded, filter(C1), 1, 'valid');
  if (bias) [c0, c1] = [tf.add(c0, tf.slice(bias, 0, 1)), tf.add(c1, tf.slice(bias, 1, 1))];
  const magnitude = tf.sqrt(tf.add(tf.square(c0), tf.square(c1)));
  // Row k: the magnitude where the orientation is at least bin k's lower edge; a bin's share is the difference.
  const atLeast = tf.concat([tf.expandDims(magnitude), tf.mul(pastEdges(c0, c1, nbins), magnitude)]);
  const n = nbins - 1;
  const binned = tf.concat([tf.sub(tf.slice(atLeast, 0, n), tf.slice(atLeast, 1, n)), tf.slice(atLeast, n, 1)]);
  return tf.reshape(binned, [nbins * B, H, W, 3]);
}

/**
 * `[θ ≥ (k+1)π/nbins]` for k < nbins − 1, `[nbins − 1, …]`, where θ = atan2(c0, c1) mod π, the orientation
 * binned by `floor(atan2(c0, c1) / π · nbins) mod nbins`. Without atan2: the response is folded into the upper
 * half-plane and compared with each edge by the sign of a cross product, which is exact where the responses
 * are (zero and axis-aligned responses) and free of the loose atan2 of GPU shading languages.
 */
function pastEdges(c0: tf.Tensor, c1: tf.Tensor, nbins: number): tf.Tensor {
  const flip = tf.logicalOr(tf.less(c0, 0), tf.logicalAnd(tf.equal(c0, 0), tf.less(c1, 0)));
  const sign = tf.sub(1, tf.mul(tf.cast(flip, 'float32'), 2));
  const [y, x] = [tf.expandDims(tf.mul(c0, sign)), tf.expandDims(tf.mul(c1, sign))];
  const { cos, sin } = binEdges(nbins);
  const column = (v: number[]) => tf.tensor(v, [nbins - 1, 1, 1, 1, 1]);
  return tf.cast(tf.greaterEqual(tf.sub(tf.mul(y, column(cos)), tf.mul(x, column(sin))), 0), 'float32');
}

/** cos and sin of the bin edges (k+1)π/nbins, k < nbins − 1, with the vanishing ones exactly 0. */
function binEdges(nbins: number): { cos: number[]; sin: number[] } {
  const edges = Array.from({ length: nbins - 1 }, (_, k) => ((k + 1) * Math.PI) / nbins);
  const exact = (v: number) => (Math.abs(v) < 1e-12 ? 0 : v);
  return { cos: edges.map((e) => exact(Math.cos(e))), sin: edges.map((e) => exact(Math.sin(e))) };
}

/**
 * Histograms averaged over `cell × cell` blocks (floor mode), `[nbins·B, ⌊H/cell⌋, ⌊W/cell⌋, 3]`, from the largest
 * cell size already in `pyramid` that divides `cell` (an average of averages is the average, and float32
 * round-off stays that of a few small sums instead of one of cell² terms). Adds it to the pyramid.
 */
function averageCells(pyramid: Map<number, tf.Tensor4D>, cell: number): tf.Tensor4D {
  const done = pyramid.get(cell);
  if (done) return done;
  const from = Math.max(...[...pyramid.keys()].filter((c) => cell % c === 0));
  const pooled = tf.avgPool(pyramid.get(from)!, cell / from, cell / from, 'valid');
  pyramid.set(cell, pooled);
  return pooled;
}

/** L2 per cell and channel of `[nbins·B, gh, gw, 3]` histograms: `[B, N, 3·nbins]`, channel-then-bin. */
function l2PerCell(pooled: tf.Tensor4D, nbins: number): tf.Tensor3D {
  const [nB, gh, gw] = pooled.shape;
  const B = nB / nbins;
  const hist = tf.transpose(tf.reshape(pooled, [nbins, B, gh * gw, 3]), [1, 2, 3, 0]); // [B, N, 3, nbins]
  const norm = tf.maximum(tf.sqrt(tf.sum(tf.square(hist), -1, true)), 1e-12);
  return tf.reshape(tf.div(hist, norm), [B, gh * gw, 3 * nbins]);
}
