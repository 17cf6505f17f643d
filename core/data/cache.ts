import { mkdirSync } from 'node:fs';
import { mkdir, readFile, readdir, rename, stat, unlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { CropSource } from './augment.js';
import { decodeCropSource, decodeShorterSide, type Decoded } from './decode.js';

let tmpCounter = 0;

/** Header of an entry: the stored copy's width and height, then the original's (u32 little-endian each). */
const HEADER = 16;

/**
 * Decoded images stored as raw RGB under the app's data folder, either with the shorter side at `side` px
 * (evaluation) or as the source of random crops (training, sized by `cropSourceSize`). Keys carry the content
 * hash, so a changed file is never served stale; the folder is kept under `maxBytes` by evicting the least
 * recently used entries.
 */
export class DecodeCache {
  hits = 0;
  misses = 0;
  private bytes: number | undefined;

  constructor(
    readonly dir: string,
    readonly maxBytes = 2 * 1024 ** 3,
  ) {
    mkdirSync(dir, { recursive: true });
  }

  async get(abs: string, hash: string, size: number | CropSource): Promise<Decoded> {
    const variant = typeof size === 'number' ? `${size}` : `crop${size.imgSize}-${size.minScale}`;
    const file = join(this.dir, `${hash.slice(0, 40)}-${variant}.rgb`);
    const cached = await readFile(file).catch(() => undefined);
    const hit = cached && fromEntry(cached);
    if (hit) {
      this.hits++;
      const now = new Date();
      await utimes(file, now, now).catch(() => undefined);
      return hit;
    }
    this.misses++;
    const img = typeof size === 'number' ? await decodeShorterSide(abs, size) : await decodeCropSource(abs, size);
    const header = Buffer.alloc(HEADER);
    [img.width, img.height, img.original.width, img.original.height].forEach((n, i) => header.writeUInt32LE(n, 4 * i));
    const tmp = `${file}.tmp-${process.pid}-${tmpCounter++}`;
    const entry = Buffer.concat([header, img.data]);
    // The folder may have been deleted to clear the cache: make it again.
    await writeFile(tmp, entry).catch(async (err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
      await mkdir(this.dir, { recursive: true });
      await writeFile(tmp, entry);
    });
    await rename(tmp, file);
    this.bytes = (this.bytes ?? (await this.size())) + HEADER + img.data.length;
    if (this.bytes > this.maxBytes) await this.evict();
    return img;
  }

  private async entries() {
    const names = (await readdir(this.dir)).filter((n) => n.endsWith('.rgb'));
    const all = await Promise.all(
      names.map(async (n) => ({ path: join(this.dir, n), st: await stat(join(this.dir, n)).catch(() => undefined) })),
    );
    return all.filter((e) => e.st).map((e) => ({ path: e.path, size: e.st!.size, used: e.st!.mtimeMs }));
  }

  async size(): Promise<number> {
    return (await this.entries()).reduce((n, e) => n + e.size, 0);
  }

  /** Deletes least recently used entries until the cache is at 90 % of its bound. */
  async evict(): Promise<void> {
    const entries = (await this.entries()).sort((a, b) => a.used - b.used);
    let total = entries.reduce((n, e) => n + e.size, 0);
    for (const e of entries) {
      if (total <= 0.9 * this.maxBytes) break;
      await unlink(e.path).catch(() => undefined);
      total -= e.size;
    }
    this.bytes = total;
  }
}

/** An entry's image, or undefined when the file is not a whole entry of this layout (then it is decoded again). */
function fromEntry(b: Buffer): Decoded | undefined {
  if (b.length < HEADER) return undefined;
  const [width, height, ow, oh] = [0, 1, 2, 3].map((i) => b.readUInt32LE(4 * i)) as [number, number, number, number];
  if (b.length !== HEADER + width * height * 3) return undefined;
  const data = new Uint8Array(b.buffer, b.byteOffset + HEADER, width * height * 3);
  return { width, height, data, original: { width: ow, height: oh } };
}
