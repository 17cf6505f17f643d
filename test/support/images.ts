import { mkdirSync, readdirSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { SAMPLE_IMAGES } from '../../core/home.js';
import type { RgbImage } from '../../core/image.js';
import { Rng } from '../../core/random.js';

/** Smooth random test images: a few random sinusoids per channel, so that HOG targets have structure. */
export function syntheticImages(n: number, size: number, seed: number): RgbImage[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => {
    const waves = Array.from({ length: 9 }, () => [rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), rng.uniform(0, 6.3)] as const);
    const data = new Uint8Array(size * size * 3);
    for (let y = 0; y < size; y++)
      for (let x = 0; x < size; x++)
        for (let c = 0; c < 3; c++) {
          const v = waves.slice(3 * c, 3 * c + 3).reduce((s, [fx, fy, ph]) => s + Math.sin(fx * x + fy * y + ph), 0);
          data[(y * size + x) * 3 + c] = Math.round(127.5 + 40 * v);
        }
    return { height: size, width: size, data };
  });
}

/** Images on 0–255, ImageNet-normalised and channels first, as an ONNX export takes them: `[B·3·H·W]`. */
export function channelsFirst(images: RgbImage[]): Float32Array {
  const mean = [0.485, 0.456, 0.406];
  const std = [0.229, 0.224, 0.225];
  const n = images[0]!.width * images[0]!.height;
  const x = new Float32Array(images.length * 3 * n);
  for (const [b, { data }] of images.entries())
    for (let i = 0; i < n; i++) for (let c = 0; c < 3; c++) x[(b * 3 + c) * n + i] = (data[3 * i + c]! / 255 - mean[c]!) / std[c]!;
  return x;
}

/** A labeled folder of the bundled sample crops: one class per source photograph, the first `perClass` crops of each (symlinks). */
export function labeledSamples(dir: string, perClass = Infinity): string {
  const files = readdirSync(SAMPLE_IMAGES)
    .filter((f) => f.endsWith('.jpg'))
    .sort();
  for (const f of files) {
    const [, cls, n] = /^(.*)-(\d+)\.jpg$/.exec(f)!;
    if (Number(n) >= perClass) continue;
    mkdirSync(join(dir, cls!), { recursive: true });
    symlinkSync(join(SAMPLE_IMAGES, f), join(dir, cls!, f));
  }
  return dir;
}
