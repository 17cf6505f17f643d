import * as tf from '@tensorflow/tfjs';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';
import { writeAtomic } from '../atomic.js';
import { UnreadableImageError } from '../data/decode.js';
import { evalImage } from '../data/preprocess.js';
import type { PretrainModel } from '../model/pretraining.js';
import { homePaths } from '../home.js';
import { Rng, seedFor, STREAMS } from '../random.js';
import type { Rgb8 } from '../image.js';

/** How many of a run's first images its previews show. */
export const PREVIEW_PROBES = 2;

/** The run's first PREVIEW_PROBES images that can be read, through the eval transform: what either engine's previews show. */
export async function previewImages(items: { abs: string }[], imgSize: number): Promise<Rgb8[]> {
  const images: Rgb8[] = [];
  for (const it of items) {
    if (images.length === PREVIEW_PROBES) break;
    const img = await evalImage(it.abs, imgSize).catch((err: Error) => {
      if (!(err instanceof UnreadableImageError)) throw err;
    });
    if (img) images.push(img);
  }
  return images;
}

/** The previews' fixed mask: `n` uniform numbers of the run's seed, the same on either engine. */
export const previewNoise = (seed: number, n: number) => new Rng(seedFor(seed, STREAMS.preview)).fill(n);

/** Where a run's preview of one step lives. */
export const previewDir = (home: string, runId: number, step: number) => join(homePaths(home).run(runId), 'previews', String(step));

/** Side of every preview picture, in pixels. */
const SIDE = 256;

export interface PreviewProbe {
  input: Buffer;
  masked: Buffer;
  /** Per scale: target and prediction as PNG (HOG as orientation glyphs per cell, pixels as images). */
  scales: { cell: number; target: Buffer; pred: Buffer }[];
}

/** What a preview draws: per scale the predictions and targets `[B, N, F]`, and the mask `[B, g²]` (1 = removed). */
export interface PreviewArrays {
  preds: Float32Array[];
  targets: Float32Array[];
  mask: Float32Array;
}

/** Reconstructions of a fixed probe set under a fixed mask: what the model predicts at every scale. */
export async function renderPreview(model: PretrainModel, probes: Rgb8[], noise: Float32Array): Promise<PreviewProbe[]> {
  const batch = model.prepare(probes, noise);
  const kept = tf.tidy(() => model.forward(batch).preds.map((p) => tf.keep(p)));
  const read = (ts: tf.Tensor[]) => Promise.all(ts.map((t) => t.data() as Promise<Float32Array>));
  const [preds, targets] = await Promise.all([read(kept), read(batch.targets)]);
  tf.dispose(kept);
  const { mask, g, p } = model.pixelMask(batch);
  const masks = new Float32Array(probes.length * g * g);
  probes.forEach((_, b) => masks.set(mask(b), b * g * g));
  model.disposeBatch(batch);
  return drawPreview(
    probes,
    { preds, targets, mask: masks },
    { cells: model.cells, F: model.F, g, p, nbins: model.config.nbins, hog: model.config.target === 'hog' },
  );
}

/** The one renderer of previews, for either engine's arrays. */
export function drawPreview(
  probes: Rgb8[],
  a: PreviewArrays,
  o: { cells: readonly number[]; F: readonly number[]; g: number; p: number; nbins: number; hog: boolean },
): Promise<PreviewProbe[]> {
  const { cells, F, g, p } = o;
  return Promise.all(
    probes.map(async (img, b) => ({
      input: await png(img),
      masked: await png(maskedCopy(img, a.mask.subarray(b * g * g, (b + 1) * g * g), g, p)),
      scales: await Promise.all(
        cells.map(async (cell, k) => {
          const n = (img.height / cell) * (img.width / cell);
          const at = (x: Float32Array) => x.subarray(b * n * F[k]!, (b + 1) * n * F[k]!);
          const draw = (x: Float32Array) =>
            o.hog ? hogGlyphs(x, img.height / cell, img.width / cell, o.nbins) : png(pixelImage(x, img, cell));
          return { cell, target: await draw(at(a.targets[k]!)), pred: await draw(at(a.preds[k]!)) };
        }),
      ),
    })),
  );
}

function png(img: Rgb8): Promise<Buffer> {
  return sharp(img.data, { raw: { width: img.width, height: img.height, channels: 3 } })
    .resize(SIDE, SIDE, { kernel: 'nearest' })
    .png()
    .toBuffer();
}

/** The input with removed patches (mask 1) faded to grey, as the encoder does not see them. */
function maskedCopy(img: Rgb8, mask: Float32Array, g: number, p: number): Rgb8 {
  const data = Uint8Array.from(img.data);
  for (let y = 0; y < img.height; y++)
    for (let x = 0; x < img.width; x++)
      if (mask[Math.floor(y / p) * g + Math.floor(x / p)])
        for (let c = 0; c < 3; c++) data[(y * img.width + x) * 3 + c] = 96 + data[(y * img.width + x) * 3 + c]! / 8;
  return { ...img, data };
}

/** Pixel targets `[N, (dy, dx, c)]` put back in place, each patch stretched to 0–255 (they are standardised). */
function pixelImage(a: Float32Array, img: Rgb8, cell: number): Rgb8 {
  const gw = img.width / cell;
  const data = new Uint8Array(img.width * img.height * 3);
  const P = 3 * cell * cell;
  for (let n = 0; n < a.length / P; n++) {
    const patch = a.subarray(n * P, (n + 1) * P);
    let lo = Infinity;
    let hi = -Infinity;
    for (const v of patch) [lo, hi] = [Math.min(lo, v), Math.max(hi, v)];
    const [ty, tx] = [Math.floor(n / gw), n % gw];
    for (let i = 0; i < P; i++) {
      const [dy, dx, c] = [Math.floor(i / (3 * cell)), Math.floor(i / 3) % cell, i % 3];
      data[((ty * cell + dy) * img.width + tx * cell + dx) * 3 + c] = hi > lo ? (255 * (patch[i]! - lo)) / (hi - lo) : 128;
    }
  }
  return { width: img.width, height: img.height, data };
}

/**
 * HOG histograms `[gh·gw, 3·nbins]` as glyphs: in each cell, one line per orientation bin along the edge
 * direction (perpendicular to the gradient), as bright as the bin summed over the three channels.
 */
function hogGlyphs(a: Float32Array, gh: number, gw: number, nbins: number): Promise<Buffer> {
  const size = SIDE / gw;
  let max = 1e-6;
  const cellHist = (n: number, k: number) => a[n * 3 * nbins + k]! + a[n * 3 * nbins + nbins + k]! + a[n * 3 * nbins + 2 * nbins + k]!;
  for (let n = 0; n < gh * gw; n++) for (let k = 0; k < nbins; k++) max = Math.max(max, cellHist(n, k));
  const lines: string[] = [];
  for (let n = 0; n < gh * gw; n++) {
    const [cx, cy] = [((n % gw) + 0.5) * size, (Math.floor(n / gw) + 0.5) * size];
    for (let k = 0; k < nbins; k++) {
      const v = Math.max(0, cellHist(n, k)) / max;
      if (v < 0.05) continue;
      // Bin k holds gradients at θ = atan2(c0, c1) ∈ [kπ/n, (k+1)π/n); (sin θ, cos θ) is the gradient in (x, y).
      const theta = ((k + 0.5) * Math.PI) / nbins;
      const [dx, dy] = [(Math.cos(theta) * size) / 2, (-Math.sin(theta) * size) / 2];
      lines.push(
        `<line x1="${(cx - dx).toFixed(1)}" y1="${(cy - dy).toFixed(1)}" x2="${(cx + dx).toFixed(1)}" y2="${(cy + dy).toFixed(1)}" stroke-opacity="${v.toFixed(2)}"/>`,
      );
    }
  }
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${SIDE}" height="${(SIDE * gh) / gw}"><rect width="100%" height="100%" fill="#111"/><g stroke="#fff" stroke-width="${Math.max(1, size / 10).toFixed(1)}">${lines.join('')}</g></svg>`;
  return sharp(Buffer.from(svg)).png().toBuffer();
}

/** A rendered preview in `dir`: its PNGs, then preview.json, which marks it complete. */
export function writePreview(dir: string, step: number, rendered: PreviewProbe[]): void {
  mkdirSync(dir, { recursive: true });
  rendered.forEach((p, b) => {
    writeAtomic(join(dir, `${b}-input.png`), p.input);
    writeAtomic(join(dir, `${b}-masked.png`), p.masked);
    p.scales.forEach((s, k) => {
      writeAtomic(join(dir, `${b}-${k}-target.png`), s.target);
      writeAtomic(join(dir, `${b}-${k}-pred.png`), s.pred);
    });
  });
  const meta = { step, probes: rendered.length, cells: rendered[0]?.scales.map((s) => s.cell) ?? [] };
  writeAtomic(join(dir, 'preview.json'), JSON.stringify(meta));
}
