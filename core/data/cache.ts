import { mkdirSync } from 'node:fs';
import { readFile, readdir, rename, stat, unlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Rgb8 } from '../targets/image.js';
import { decodeShorterSide } from './preprocess.js';

let tmpCounter = 0;

/**
 * Decoded images, resized so the shorter side is `side` px (a little above the training size), stored as
 * raw RGB under the app's data folder. Keys carry the content hash, so a changed file is never served
 * stale; the folder is kept under `maxBytes` by evicting the least recently used entries.
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

  async get(abs: string, hash: string, side: number): Promise<Rgb8> {
    const file = join(this.dir, `${hash.slice(0, 40)}-${side}.rgb`);
    const cached = await readFile(file).catch(() => undefined);
    if (cached && cached.length > 8) {
      this.hits++;
      const now = new Date();
      await utimes(file, now, now).catch(() => undefined);
      const width = cached.readUInt32LE(0);
      const height = cached.readUInt32LE(4);
      if (cached.length === 8 + width * height * 3)
        return { width, height, data: new Uint8Array(cached.buffer, cached.byteOffset + 8, width * height * 3) };
    }
    this.misses++;
    const img = await decodeShorterSide(abs, side);
    const header = Buffer.alloc(8);
    header.writeUInt32LE(img.width, 0);
    header.writeUInt32LE(img.height, 4);
    const tmp = `${file}.tmp-${process.pid}-${tmpCounter++}`;
    await writeFile(tmp, Buffer.concat([header, img.data]));
    await rename(tmp, file);
    this.bytes = (this.bytes ?? (await this.size())) + 8 + img.data.length;
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
