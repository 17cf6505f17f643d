import { normalize, type RgbImage } from './image.js';

/** Offsets `(b0, b1)` added to the horizontal and vertical Sobel responses (the official `--hog_bias`, docs/method.md#hog-bias). */
export type HogBias = readonly [number, number];

/**
 * HOG targets of one image (docs/method.md#hog-targets), one `[L, 3·nbins]` array per cell size, `L` cells in raster
 * order and features ordered channel-then-bin. Without a bias the Sobel responses are computed as
 * exact paired differences of the 0–255 values (the result is invariant to the ImageNet normalisation);
 * with one they are computed on the normalised image, as the bias lives in those units.
 */
export function hog(img: RgbImage, nbins: number, cells: readonly number[], bias?: readonly (HogBias | null)[]): Float32Array[] {
  const plain = bias?.every((b) => !b) !== false ? orientedMagnitudes(img.data, img, nbins, null) : undefined;
  const normalized = plain ? undefined : normalize(img);
  return cells.map((cell, k) => {
    const b = bias?.[k] ?? null;
    const oriented = plain ?? orientedMagnitudes(normalized!, img, nbins, b);
    return poolCells(oriented, img, nbins, cell);
  });
}

interface Oriented {
  magnitude: Float64Array; // [3, H, W]
  bin: Uint8Array; // [3, H, W]
}

/** Sobel pair with mirror padding, magnitude and unsigned orientation bin for every pixel of every channel. */
function orientedMagnitudes(data: ArrayLike<number>, img: RgbImage, nbins: number, bias: HogBias | null): Oriented {
  const { height: H, width: W } = img;
  const magnitude = new Float64Array(3 * H * W);
  const bin = new Uint8Array(3 * H * W);
  const [b0, b1] = bias ?? [0, 0];
  const mirror = (i: number, n: number) => (i < 0 ? 1 : i >= n ? n - 2 : i);
  for (let c = 0; c < 3; c++) {
    const at = (y: number, x: number) => data[(mirror(y, H) * W + mirror(x, W)) * 3 + c]!;
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        // c0: left − right, rows weighted 1 2 1; c1: above − below, columns weighted 1 2 1.
        const c0 = at(y - 1, x - 1) - at(y - 1, x + 1) + 2 * (at(y, x - 1) - at(y, x + 1)) + (at(y + 1, x - 1) - at(y + 1, x + 1)) + b0;
        const c1 = at(y - 1, x - 1) - at(y + 1, x - 1) + 2 * (at(y - 1, x) - at(y + 1, x)) + (at(y - 1, x + 1) - at(y + 1, x + 1)) + b1;
        const i = (c * H + y) * W + x;
        magnitude[i] = Math.sqrt(c0 * c0 + c1 * c1);
        const k = Math.floor((Math.atan2(c0, c1) / Math.PI) * nbins);
        bin[i] = ((k % nbins) + nbins) % nbins;
      }
    }
  }
  return { magnitude, bin };
}

/** Hard magnitude-weighted binning, average over `cell × cell` (floor mode), L2 per cell and channel. */
function poolCells({ magnitude, bin }: Oriented, img: RgbImage, nbins: number, cell: number): Float32Array {
  const { height: H, width: W } = img;
  const gh = Math.floor(H / cell);
  const gw = Math.floor(W / cell);
  const F = 3 * nbins;
  const out = new Float32Array(gh * gw * F);
  const hist = new Float64Array(nbins);
  for (let cy = 0; cy < gh; cy++) {
    for (let cx = 0; cx < gw; cx++) {
      for (let c = 0; c < 3; c++) {
        hist.fill(0);
        for (let y = cy * cell; y < (cy + 1) * cell; y++) {
          for (let x = cx * cell; x < (cx + 1) * cell; x++) {
            const i = (c * H + y) * W + x;
            hist[bin[i]!]! += magnitude[i]!;
          }
        }
        let sq = 0;
        for (let k = 0; k < nbins; k++) sq += (hist[k]! / (cell * cell)) ** 2;
        const norm = Math.max(Math.sqrt(sq), 1e-12);
        const row = (cy * gw + cx) * F + c * nbins;
        for (let k = 0; k < nbins; k++) out[row + k] = hist[k]! / (cell * cell) / norm;
      }
    }
  }
  return out;
}
