import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { DecodeCache } from '../core/data/cache.js';
import { IMAGE_EXTENSIONS } from '../core/data/formats.js';
import { indexFolder } from '../core/data/indexer.js';
import { Loader, type DataItem } from '../core/data/loader.js';
import { SAMPLE_IMAGES } from '../core/home.js';
import { Store } from '../core/store/store.js';

const LARGE = { count: 24, width: 3000, height: 2000 };

/**
 * Indexing throughput next to a bare sharp decode loop over the same files; then loader epochs with a cold and a
 * warm decode cache, and the cache's size on disk, for the sample images and for large synthetic photos, at 64 and
 * 224 px.
 */
export async function benchData(): Promise<void> {
  const home = mkdtempSync(join(tmpdir(), 'localmim-bench-'));
  try {
    const store = new Store(join(home, 'localmim.db'));
    const samples = await benchIndex(store);
    const large = await indexLarge(store, join(home, 'large'));
    store.close();
    for (const [name, items, batch] of [
      ['samples', samples, 32],
      ['large', large, 8],
    ] as const)
      for (const imgSize of [64, 224]) await benchEpochs(name, items, imgSize, batch, join(home, `cache-${name}-${imgSize}`));
  } finally {
    rmSync(home, { recursive: true, force: true });
  }
}

async function benchIndex(store: Store): Promise<DataItem[]> {
  const files = readdirSync(SAMPLE_IMAGES).filter((f) => IMAGE_EXTENSIONS.has(f.slice(f.lastIndexOf('.')).toLowerCase()));
  let t0 = performance.now();
  await Promise.all(files.map((f) => sharp(join(SAMPLE_IMAGES, f)).raw().toBuffer()));
  const bareS = (performance.now() - t0) / 1000;
  t0 = performance.now();
  const s = await indexFolder(store, SAMPLE_IMAGES);
  const indexS = (performance.now() - t0) / 1000;
  t0 = performance.now();
  await indexFolder(store, SAMPLE_IMAGES);
  const reindexS = (performance.now() - t0) / 1000;
  const line = {
    bench: 'index',
    images: s.images,
    imagesPerS: +(s.images / indexS).toFixed(1),
    bareDecodePerS: +(files.length / bareS).toFixed(1),
  };
  console.log(
    JSON.stringify({ ...line, ratio: +(line.imagesPerS / line.bareDecodePerS).toFixed(3), reindexUnchangedS: +reindexS.toFixed(3) }),
  );
  return store.images(s.datasetId, 'ok').map((r) => ({ abs: join(s.root, r.path), hash: r.hash! }));
}

/** Photo-sized JPEGs (smooth colour plus noise, so the encoder cannot shrink them to nothing). */
async function indexLarge(store: Store, dir: string): Promise<DataItem[]> {
  mkdirSync(dir);
  const { count, width, height } = LARGE;
  for (let i = 0; i < count; i++)
    await sharp({
      create: {
        width,
        height,
        channels: 3,
        background: { r: (i * 37) % 256, g: 120, b: 200 },
        noise: { type: 'gaussian', mean: 128, sigma: 40 },
      },
    })
      .jpeg({ quality: 90 })
      .toFile(join(dir, `large-${i}.jpg`));
  const s = await indexFolder(store, dir);
  return store.images(s.datasetId, 'ok').map((r) => ({ abs: join(s.root, r.path), hash: r.hash! }));
}

async function benchEpochs(set: string, items: DataItem[], imgSize: number, batch: number, dir: string): Promise<void> {
  // One cold epoch, then several warm ones (a small set's single epoch is too short to time).
  for (const [cache, epochs] of [
    ['cold', [0]],
    ['warm', [1, 2, 3, 4]],
  ] as const) {
    const loader = new Loader(items, new DecodeCache(dir), imgSize, batch, 0);
    const t0 = performance.now();
    for (const epoch of epochs) for (let i = 0; i < loader.batchesPerEpoch; i++) await loader.get(epoch, i);
    const seconds = (performance.now() - t0) / 1000;
    const images = loader.batchesPerEpoch * batch * epochs.length;
    // Prefetch may still be adding entries (each renamed into place whole): the size per entry is the stable figure.
    const entries = readdirSync(dir).filter((f) => f.endsWith('.rgb'));
    const bytes = entries.reduce((n, f) => n + statSync(join(dir, f)).size, 0);
    console.log(
      JSON.stringify({
        bench: 'data-epoch',
        set,
        imgSize,
        cache,
        images,
        seconds: +seconds.toFixed(3),
        imagesPerS: +(images / seconds).toFixed(1),
        cacheMB: +(bytes / 2 ** 20).toFixed(2),
        kBPerEntry: Math.round(bytes / entries.length / 1024),
      }),
    );
  }
}
