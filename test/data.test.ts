import {
  chmodSync,
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { deflateSync } from 'node:zlib';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { cropSourceSize, finetuneAugment, MAX_CROP_SOURCE_PIXELS, randomCrop, scaleCrop, type Crop } from '../core/data/augment.js';
import { DecodeCache } from '../core/data/cache.js';
import { indexFolder, type IndexSummary } from '../core/data/indexer.js';
import { Loader, sampleRng, TooFewImagesError } from '../core/data/loader.js';
import { Rng } from '../core/random.js';
import { Store } from '../core/store/store.js';
import type { RgbImage } from '../core/image.js';
import { localmimAsync } from './support/cli.js';

const tmp = mkdtempSync(join(tmpdir(), 'localmim-data-'));
const root = join(tmp, 'photos');
const store = new Store(join(tmp, 'home', 'localmim.db'));
afterAll(() => {
  store.close();
  rmSync(tmp, { recursive: true, force: true });
});

const gradient = (w: number, h: number, channels: 1 | 3 | 4 = 3) =>
  sharp(Buffer.from(Array.from({ length: w * h * channels }, (_, i) => (i * 7) % 251)), { raw: { width: w, height: h, channels } });

/** A PNG whose header claims 100000 × 100000 pixels: a decompression bomb that must not be decoded. */
function hugeHeaderPng(): Buffer {
  const chunk = (type: string, data: Buffer) => {
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([len, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(100_000, 0);
  ihdr.writeUInt32BE(100_000, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  return Buffer.concat([
    Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(Buffer.alloc(10))),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

function crc32(buf: Buffer): number {
  let c = ~0;
  for (const b of buf) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return ~c >>> 0;
}

let first: IndexSummary;

beforeAll(async () => {
  mkdirSync(join(root, 'cats'), { recursive: true });
  mkdirSync(join(root, 'dogs', 'deeper'), { recursive: true });
  await gradient(64, 48)
    .jpeg()
    .toFile(join(root, 'cats', 'a.jpg'));
  await gradient(64, 64)
    .png()
    .toFile(join(root, 'cats', 'b.png'));
  await gradient(50, 40)
    .webp()
    .toFile(join(root, 'dogs', 'c.webp'));
  await gradient(40, 40)
    .gif()
    .toFile(join(root, 'dogs', 'd.gif'));
  await gradient(40, 40)
    .tiff()
    .toFile(join(root, 'dogs', 'deeper', 'e.tiff'));
  await gradient(48, 48).avif().toFile(join(root, 'f.avif'));
  await gradient(40, 40, 1).png().toFile(join(root, 'grey.png'));
  await gradient(40, 40, 4).png().toFile(join(root, 'alpha.png'));
  await gradient(40, 20).withMetadata({ orientation: 6 }).jpeg().toFile(join(root, 'rotated.jpg'));
  await gradient(32, 32).png().toFile(join(root, 'ünïcode name with spaces.png'));
  copyFileSync(join(root, 'cats', 'b.png'), join(root, 'dogs', 'b-copy.png'));
  const jpeg = readFileSync(join(root, 'cats', 'a.jpg'));
  writeFileSync(join(root, 'truncated.jpg'), jpeg.subarray(0, Math.floor(jpeg.length / 2))); // head -c half
  writeFileSync(join(root, 'empty.jpg'), '');
  writeFileSync(join(root, 'notes.png'), 'a text file renamed .png');
  writeFileSync(join(root, 'README.txt'), 'not an image extension: ignored');
  await gradient(1, 1).png().toFile(join(root, 'tiny.png'));
  writeFileSync(join(root, 'bomb.png'), hugeHeaderPng());
  symlinkSync('..', join(root, 'dogs', 'loop'));
  symlinkSync('missing.jpg', join(root, 'dangling.jpg'));
  first = await indexFolder(store, root);
});

describe('indexing', () => {
  test('every format decodes, with its size after EXIF rotation and its class folder', () => {
    expect(first.images).toBe(11);
    expect(first.byFormat).toEqual({ jpeg: 2, png: 5, webp: 1, gif: 1, tiff: 1, avif: 1 });
    const rows = new Map(store.images(first.datasetId, 'ok').map((r) => [r.path, r]));
    expect(rows.get('rotated.jpg')).toMatchObject({ width: 20, height: 40 });
    expect(rows.get('cats/a.jpg')).toMatchObject({ width: 64, height: 48, label: 'cats', format: 'jpeg' });
    expect(rows.get('dogs/deeper/e.tiff')?.label).toBe('dogs');
    expect(rows.get('f.avif')?.label).toBeNull();
    expect(rows.has('ünïcode name with spaces.png')).toBe(true);
    expect(rows.get('cats/a.jpg')?.hash).toMatch(/^[0-9a-f]{64}$/);
  });

  test('hostile files are rejected with a reason, never crashing the indexer', () => {
    const reasons = Object.fromEntries(first.rejected.map((r) => [r.path, r.reason]));
    expect(reasons['truncated.jpg']).toMatch(/corrupt or truncated jpeg/);
    expect(reasons['empty.jpg']).toBe('empty file (0 bytes)');
    expect(reasons['notes.png']).toMatch(/not a decodable image/);
    expect(reasons['tiny.png']).toMatch(/too small: 1×1/);
    expect(reasons['bomb.png']).toMatch(/too large: 100000×100000/);
    expect(reasons['dangling.jpg']).toMatch(/broken or looping symlink/);
    expect(first.rejected).toHaveLength(6);
    expect(first.ignored).toBe(1);
  });

  test('exact duplicates are reported', () => {
    expect(first.duplicates).toEqual([['cats/b.png', 'dogs/b-copy.png']]);
  });

  test('re-indexing is incremental: unchanged files are not decoded again, changes are picked up', async () => {
    await gradient(30, 30).png().toFile(join(root, 'new.png'));
    unlinkSync(join(root, 'dogs', 'c.webp'));
    await gradient(64, 40)
      .jpeg({ quality: 50 })
      .toFile(join(root, 'cats', 'a.jpg'));
    utimesSync(join(root, 'cats', 'a.jpg'), new Date(), new Date(Date.now() + 5000));
    const again = await indexFolder(store, root);
    expect(again).toMatchObject({ added: 1, removed: 1, images: 11 });
    // 17 entries the first time (11 images, 6 rejected); one is gone and one changed.
    expect(again).toMatchObject({ unchanged: 15, updated: 1 });
    expect(store.images(first.datasetId, 'ok').find((r) => r.path === 'cats/a.jpg')).toMatchObject({ width: 64, height: 40 });
  });

  test.skipIf(process.getuid?.() === 0)('a file without read permission is rejected (not testable as root)', async () => {
    await gradient(30, 30).png().toFile(join(root, 'locked.png'));
    chmodSync(join(root, 'locked.png'), 0);
    const s = await indexFolder(store, root);
    expect(s.rejected.find((r) => r.path === 'locked.png')?.reason).toBe('permission denied');
  });

  test('localmim index applies its default limits, names the limit and flag, counts only images as new, reports skipped links', async () => {
    const folder = join(tmp, 'limits');
    mkdirSync(join(folder, 'sub'), { recursive: true });
    await gradient(32, 32).png().toFile(join(folder, 'ok.png'));
    await gradient(1, 1).png().toFile(join(folder, 'tiny.png'));
    writeFileSync(join(folder, 'bomb.png'), hugeHeaderPng());
    symlinkSync('..', join(folder, 'sub', 'loop'));
    const index = (...flags: string[]) => localmimAsync(['index', folder, '--home', join(tmp, 'cli-home'), ...flags]);
    const r = await index('--json');
    expect(r.code, r.stderr).toBe(0);
    const s = JSON.parse(r.stdout) as IndexSummary;
    expect(Object.fromEntries(s.rejected.map((x) => [x.path, x.reason]))).toEqual({
      'bomb.png': 'too large: 100000×100000 is over the limit of 80000000 pixels (--max-pixels raises it)',
      'tiny.png': 'too small: 1×1, shorter side under 16 px (--min-side lowers the limit)',
    });
    expect(s).toMatchObject({ images: 1, added: 1, updated: 0 });
    expect(s.skipped).toEqual([{ path: 'sub/loop', reason: 'symlink to ., a folder already indexed (a loop, or linked twice)' }]);
    const text = await index();
    expect(text.stderr).toMatch(/: 1 images \(0 new, 0 changed, 3 unchanged, 0 removed\)/);
    expect(text.stderr).toMatch(/\n {2}1 skipped:\n {4}sub\/loop: symlink to \., a folder already indexed/);
    const [bad, help] = await Promise.all([
      localmimAsync(['pretrain', '--home', join(tmp, 'cli-home'), '--min-side', '0']),
      localmimAsync(['pretrain', '--help']),
    ]);
    expect(bad.stderr).toMatch(/--min-side: expected a positive integer, got "0"/);
    expect(help.stdout).toMatch(/--min-side PX +reject images whose shorter side is below this \(default 16\)/);
  });

  test('an unreadable folder is a clear error', async () => {
    await expect(indexFolder(store, join(tmp, 'nope'))).rejects.toThrow(/nope: cannot open the folder \(ENOENT\)/);
  });
});

describe('input pipeline', () => {
  test('RandomResizedCrop stays inside the image with area 0.2–1 and aspect 3/4–4/3', () => {
    const rng = new Rng(1);
    for (let i = 0; i < 500; i++) {
      const c = randomCrop(rng, 120, 80);
      expect(c.left + c.width).toBeLessThanOrEqual(120);
      expect(c.top + c.height).toBeLessThanOrEqual(80);
      const area = (c.width * c.height) / (120 * 80);
      expect(area).toBeGreaterThan(0.18);
      expect(area).toBeLessThanOrEqual(1);
      expect(c.width / c.height).toBeGreaterThan(0.7);
      expect(c.width / c.height).toBeLessThan(1.4);
    }
  });

  test("RandomResizedCrop's boxes follow torchvision's get_params: accepted area and ratio laws, centre fallback", () => {
    // A draw (s ~ U(0.2, 1), log r ~ U(log 3/4, log 4/3)) fits a square iff s·max(r, 1/r) ≤ 1: the mean accepted s
    // and |log r|, integrated on a grid, against 20000 boxes of a 1000² image.
    const [lo, hi] = [Math.log(3 / 4), Math.log(4 / 3)];
    let [n, sumS, sumLogR] = [0, 0, 0];
    for (let a = 0.5; a < 400; a++)
      for (let b = 0.5; b < 400; b++) {
        const [s, logR] = [0.2 + (0.8 * a) / 400, lo + ((hi - lo) * b) / 400];
        if (s * Math.exp(Math.abs(logR)) > 1) continue;
        [n, sumS, sumLogR] = [n + 1, sumS + s, sumLogR + Math.abs(logR)];
      }
    const rng = new Rng(3);
    const boxes = Array.from({ length: 20_000 }, () => randomCrop(rng, 1000, 1000));
    expect(boxes.every((c) => c.left >= 0 && c.top >= 0 && c.left + c.width <= 1000 && c.top + c.height <= 1000)).toBe(true);
    expect(Math.min(...boxes.map((c) => (c.width * c.height) / 1e6))).toBeGreaterThanOrEqual(0.198);
    const mean = (f: (c: Crop) => number) => boxes.reduce((t, c) => t + f(c), 0) / boxes.length;
    expect(mean((c) => (c.width * c.height) / 1e6)).toBeCloseTo(sumS / n, 2);
    expect(mean((c) => Math.abs(Math.log(c.width / c.height)))).toBeCloseTo(sumLogR / n, 2);
    expect(mean((c) => Math.log(c.width / c.height))).toBeCloseTo(0, 2);
    expect(mean((c) => Number(c.flip))).toBeCloseTo(0.5, 1);
    // 1000 × 100: no draw of area ≥ 0.2 fits, so every box is the centre crop with its ratio clamped to 4/3.
    expect(randomCrop(new Rng(4), 1000, 100)).toMatchObject({ left: 433, top: 0, width: 133, height: 100 });
  });

  test('crop sources upsample no crop unless the original or the pixel cap is too small, and never exceed either', () => {
    const rng = new Rng(5);
    const shapes = [
      [2000, 2000],
      [3000, 2000],
      [2000, 3000],
      [6000, 800],
      [400, 300],
      [12_000, 8000],
    ] as const;
    for (const [W, H] of shapes)
      for (const imgSize of [64, 224])
        for (const minScale of [0.2, 0.08]) {
          const copy = cropSourceSize(W, H, { imgSize, minScale });
          const original = copy.width === W && copy.height === H;
          expect(copy.width <= W && copy.height <= H).toBe(true);
          expect(copy.width * copy.height).toBeLessThanOrEqual(MAX_CROP_SOURCE_PIXELS * 1.01);
          const capped = copy.width * copy.height > MAX_CROP_SOURCE_PIXELS * 0.99;
          const boxes = Array.from({ length: 2000 }, () => scaleCrop(randomCrop(rng, W, H, [minScale, 1]), { width: W, height: H }, copy));
          const at = `${W}×${H} at ${imgSize}, ${minScale}`;
          expect(
            boxes.every((c) => c.left >= 0 && c.top >= 0 && c.left + c.width <= copy.width && c.top + c.height <= copy.height),
            at,
          ).toBe(true);
          if (!original && !capped) expect(Math.min(...boxes.map((c) => Math.min(c.width, c.height))), at).toBeGreaterThanOrEqual(imgSize);
        }
    expect(cropSourceSize(400, 300, { imgSize: 224, minScale: 0.2 })).toEqual({ width: 400, height: 300 });
    expect(cropSourceSize(12_000, 8000, { imgSize: 1024, minScale: 0.2 }).width).toBeLessThan(12_000 / 3);
  });

  test('crops of a large image keep the detail of a direct crop of the original, which the old small copy lost', async () => {
    // A 2000² checkerboard of 32-px cells; a box of area ≤ 0.3 maps a cell to ≥ 1.7 px of the 64² crop.
    const N = 2000;
    const px = Buffer.alloc(N * N * 3);
    for (let y = 0; y < N; y++)
      for (let x = 0; x < N; x++) px.fill((((x >> 5) + (y >> 5)) & 1) * 255, (y * N + x) * 3, (y * N + x) * 3 + 3);
    const abs = join(tmp, 'checkerboard.png');
    await sharp(px, { raw: { width: N, height: N, channels: 3 } })
      .png()
      .toFile(abs);
    const loader = new Loader([{ abs, hash: 'checkerboard' }], new DecodeCache(join(tmp, 'cb-cache')), 64, 1, 9);
    let epoch = 0;
    const small = (e: number) => randomCrop(sampleRng(9, e, 0), N, N);
    while ((small(epoch).width * small(epoch).height) / N ** 2 > 0.3) epoch++;
    const box = small(epoch);
    const resized = (img: sharp.Sharp, c: Crop) =>
      img.extract(c).resize(64, 64, { fit: 'fill', kernel: 'cubic' }).flop(c.flip).raw().toBuffer();
    const direct = await resized(sharp(abs), box);
    const side = Math.ceil(64 * 1.15); // the old loader's copy: shorter side 1.15 × imgSize
    const oldCopy = await sharp(abs).resize(side, side, { kernel: 'cubic' }).raw().toBuffer();
    const old = await resized(
      sharp(oldCopy, { raw: { width: side, height: side, channels: 3 } }),
      scaleCrop(box, { width: N, height: N }, { width: side, height: side }),
    );
    const ours = (await loader.get(epoch, 0))[0]!.data;
    // High-frequency energy: mean squared difference of horizontal neighbours.
    const energy = (d: Uint8Array) => {
      let e = 0;
      for (let i = 3; i < d.length; i++) if ((i / 3) % 64 >= 1) e += (d[i]! - d[i - 3]!) ** 2;
      return e;
    };
    expect(energy(ours)).toBeGreaterThan(0.7 * energy(direct));
    expect(energy(old)).toBeLessThan(0.2 * energy(direct));
  });

  test('batches are a function of (seed, epoch, index) and later epochs hit the decode cache', async () => {
    const items = store.images(first.datasetId, 'ok').map((r) => ({ abs: join(root, r.path), hash: r.hash! }));
    const cache = new DecodeCache(join(tmp, 'home', 'cache'));
    const a = new Loader(items, cache, 32, 4, 5);
    const b = new Loader(items, new DecodeCache(join(tmp, 'home', 'cache')), 32, 4, 5);
    const cold = new Loader(items, new DecodeCache(join(tmp, 'cold-cache')), 32, 4, 5);
    const x = await a.get(1, 1);
    expect(x.map((img) => [img.width, img.height])).toEqual([
      [32, 32],
      [32, 32],
      [32, 32],
      [32, 32],
    ]);
    expect((await b.get(1, 1)).map((img) => Buffer.from(img.data).toString('base64'))).toEqual(
      x.map((img) => Buffer.from(img.data).toString('base64')),
    );
    expect((await cold.get(1, 1)).map((img) => Buffer.from(img.data).toString('base64'))).toEqual(
      x.map((img) => Buffer.from(img.data).toString('base64')),
    );
    expect(Buffer.from((await a.get(2, 1))[0]!.data).equals(Buffer.from(x[0]!.data))).toBe(false);
    await a.get(0, 0);
    await a.get(0, 1);
    expect(cache.hits).toBeGreaterThan(0);
  });

  test('an image that cannot be read is told of once and replaced by the next readable one in the order, the same every time', async () => {
    const ok = store.images(first.datasetId, 'ok').map((r) => ({ abs: join(root, r.path), hash: r.hash! }));
    const items = [...ok, ...['gone-1.png', 'gone-2.png'].map((n) => ({ abs: join(tmp, n), hash: n }))];
    const missing = new Set([ok.length, ok.length + 1]);
    const told: string[] = [];
    const loader = (cache: string) =>
      new Loader(items, new DecodeCache(join(tmp, cache)), 32, 4, 5, {
        onSkip: (item, reason, readable) => told.push(`${basename(item.abs)}: ${reason} (${readable} readable)`),
      });
    const epochs = async (l: Loader) => {
      const out = [];
      for (let e = 0; e < 3; e++) for (let i = 0; i < l.batchesPerEpoch; i++) out.push(await l.batchAt(e, i));
      return out;
    };
    const a = await epochs(loader('skip-a'));
    // Found in either order (batches are read ahead concurrently): 12, then 11 readable.
    expect(told.map((t) => t.replace(/\(\d+/, '(N')).sort()).toEqual([
      'gone-1.png: the file is missing (N readable)',
      'gone-2.png: the file is missing (N readable)',
    ]);
    expect(told.map((t) => /\((\d+)/.exec(t)![1]).sort()).toEqual(['11', '12']);
    const b = await epochs(loader('skip-b'));
    for (const batch of a) {
      expect(batch.images).toHaveLength(4);
      expect(batch.items.filter((k) => missing.has(k))).toEqual([]);
    }
    expect(b.map((x) => x.items)).toEqual(a.map((x) => x.items));
    expect(b.map((x) => x.images.map((img) => Buffer.from(img.data).toString('base64')))).toEqual(
      a.map((x) => x.images.map((img) => Buffer.from(img.data).toString('base64'))),
    );
    // Where nothing is missing, the batch is the one planned.
    const l = loader('skip-c');
    for (let i = 0; i < l.batchesPerEpoch; i++) {
      const planned = l.itemsAt(0, i);
      if (!planned.some((k) => missing.has(k))) expect((await l.batchAt(0, i)).items).toEqual(planned);
    }
  });

  test('training stops once fewer readable images remain than one step needs', async () => {
    const ok = store.images(first.datasetId, 'ok').map((r) => ({ abs: join(root, r.path), hash: r.hash! }));
    const items = [...ok.slice(0, 3), ...[1, 2, 3].map((n) => ({ abs: join(tmp, `gone-${n}.png`), hash: `gone-${n}` }))];
    const loader = new Loader(items, new DecodeCache(join(tmp, 'few-cache')), 32, 2, 5, { minImages: 4 });
    const all = async () => {
      for (let e = 0; e < 20; e++) for (let i = 0; i < loader.batchesPerEpoch; i++) await loader.get(e, i);
    };
    const err = await all().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(TooFewImagesError);
    expect((err as Error).message).toMatch(
      /^only 3 of 6 images can still be read \(e\.g\. .*gone-\d\.png cannot\), fewer than one step of 4$/,
    );
  });

  test('fine-tuning batches: RandAugment and erasing change them, and they stay a function of (seed, epoch, index)', async () => {
    const items = store.images(first.datasetId, 'ok').map((r) => ({ abs: join(root, r.path), hash: r.hash! }));
    const cache = new DecodeCache(join(tmp, 'home', 'cache'));
    const transform = finetuneAugment({ randAugment: 'rand-m9-mstd0.5-inc1', reprob: 0.25 });
    const loader = (seed: number, o = {}) => new Loader(items, cache, 32, 4, seed, { minScale: 0.08, kernel: 'linear', ...o });
    const bytes = async (l: Loader<RgbImage>) => (await l.get(0, 0)).map((img) => Buffer.from(Float32Array.from(img.data).buffer));
    const [a, again, other, plain] = await Promise.all([
      bytes(loader(7, { transform })),
      bytes(loader(7, { transform })),
      bytes(loader(8, { transform })),
      bytes(loader(7)),
    ]);
    expect(again).toEqual(a);
    expect(other).not.toEqual(a);
    expect(a.filter((img, k) => !img.equals(plain[k]!)).length).toBeGreaterThan(1);
  });

  test('a crop source remembers the original size after EXIF rotation, and keeps its orientation', async () => {
    const cache = new DecodeCache(join(tmp, 'home', 'cache'));
    for (const r of store.images(first.datasetId, 'ok')) {
      const img = await cache.get(join(root, r.path), r.hash!, { imgSize: 8, minScale: 0.2 });
      expect(img.original).toEqual({ width: r.width, height: r.height });
      expect(img).toMatchObject(cropSourceSize(r.width!, r.height!, { imgSize: 8, minScale: 0.2 }));
    }
    // 40 × 20 stored with orientation 6 is a 20 × 40 portrait; its copy keeps √(0.15·800) / 10 ≈ 0.913 of each side.
    const rotated = store.images(first.datasetId, 'ok').find((r) => r.path === 'rotated.jpg')!;
    const copy = await cache.get(join(root, rotated.path), rotated.hash!, { imgSize: 8, minScale: 0.2 });
    expect([copy.width, copy.height]).toEqual([19, 37]);
  });

  test('the decode cache is bounded', async () => {
    const items = store.images(first.datasetId, 'ok').map((r) => ({ abs: join(root, r.path), hash: r.hash! }));
    const cache = new DecodeCache(join(tmp, 'small-cache'), 20_000);
    for (const item of items) await cache.get(item.abs, item.hash, 48);
    expect(await cache.size()).toBeLessThanOrEqual(20_000);
  });

  test('a decode cache whose folder was deleted (to clear it) makes it again', async () => {
    const [item] = store.images(first.datasetId, 'ok').map((r) => ({ abs: join(root, r.path), hash: r.hash! }));
    const cache = new DecodeCache(join(tmp, 'cleared-cache'));
    rmSync(join(tmp, 'cleared-cache'), { recursive: true });
    expect((await cache.get(item!.abs, item!.hash, 48)).width).toBeGreaterThanOrEqual(48);
    expect(await cache.size()).toBeGreaterThan(0);
  });

  test('fewer images than one batch is a clear error', () => {
    expect(() => new Loader([], new DecodeCache(join(tmp, 'c2')), 32, 8, 0)).toThrow(/0 usable images, fewer than one batch of 8/);
  });
});
