import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { DecodeCache } from '../core/data/cache.js';
import { IMAGE_EXTENSIONS } from '../core/data/formats.js';
import { indexFolder } from '../core/data/indexer.js';
import { Loader } from '../core/data/loader.js';
import { SAMPLE_IMAGES } from '../core/home.js';
import { Store } from '../core/store/store.js';

/** Indexing throughput next to a bare sharp decode loop over the same files, and loader epochs cold and warm. */
export async function benchData(): Promise<void> {
  const home = mkdtempSync(join(tmpdir(), 'localmim-bench-'));
  try {
    const files = readdirSync(SAMPLE_IMAGES).filter((f) => IMAGE_EXTENSIONS.has(f.slice(f.lastIndexOf('.')).toLowerCase()));
    let t0 = performance.now();
    await Promise.all(files.map((f) => sharp(join(SAMPLE_IMAGES, f)).raw().toBuffer()));
    const bareS = (performance.now() - t0) / 1000;

    const store = new Store(join(home, 'localmim.db'));
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

    const items = store.images(s.datasetId, 'ok').map((r) => ({ abs: join(s.root, r.path), hash: r.hash! }));
    store.close();
    for (const [name, epoch] of [
      ['cold', 0],
      ['warm', 1],
    ] as const) {
      const loader = new Loader(items, new DecodeCache(join(home, 'cache')), 64, 32, 0);
      t0 = performance.now();
      for (let i = 0; i < loader.batchesPerEpoch; i++) await loader.get(epoch, i);
      const seconds = (performance.now() - t0) / 1000;
      console.log(
        JSON.stringify({
          bench: 'data-epoch',
          cache: name,
          images: loader.batchesPerEpoch * 32,
          seconds: +seconds.toFixed(3),
          imagesPerS: +((loader.batchesPerEpoch * 32) / seconds).toFixed(1),
        }),
      );
    }
  } finally {
    rmSync(home, { recursive: true, force: true });
  }
}
