import { existsSync } from 'node:fs';
import { Rng, seedFor } from '../random.js';
import type { Rgb8, RgbImage } from '../image.js';
import { applyCrop, randomCrop, scaleCrop, type CropSource } from './augment.js';
import type { DecodeCache } from './cache.js';
import { UnreadableImageError, type Decoded } from './decode.js';

export interface DataItem {
  abs: string;
  hash: string;
}

const PERMUTATION = 1;
const CROP = 2;

/** The generator of sample `k` of epoch `epoch`: its crop, flip and augmentation draw from it, in that order. */
export const sampleRng = (seed: number, epoch: number, k: number): Rng => new Rng(seedFor(seed, CROP, epoch, k));

export interface LoaderOptions<T extends RgbImage> {
  /** Batches prepared ahead. */
  prefetch?: number;
  /** Smallest crop area of RandomResizedCrop: 0.2 in pretraining (docs/method.md#preprocessing), 0.08 in fine-tuning. */
  minScale?: number;
  /** Resize kernel of the crop: bicubic in pretraining, as the recipe says in fine-tuning (core/recipe.ts cropKernel). */
  kernel?: 'cubic' | 'linear';
  /** Augmentation after crop and flip, drawing from the sample's own generator (after the crop's draws). */
  transform?: (img: Rgb8, rng: Rng) => T;
  /** Told once of each image that cannot be read (deleted, moved, damaged during training); another takes its place. */
  onSkip?: (item: DataItem, reason: string, readable: number) => void;
  /** Fewer readable images than this stop training with a {@link TooFewImagesError} (default: one batch). */
  minImages?: number;
}

/** Too many of the run's images became unreadable to go on. */
export class TooFewImagesError extends Error {
  constructor(
    readonly readable: number,
    readonly total: number,
    readonly need: number,
    readonly example: string,
  ) {
    super(`only ${readable} of ${total} images can still be read (e.g. ${example} cannot), fewer than one step of ${need}`);
    this.name = 'TooFewImagesError';
  }
}

/** A micro-batch and the indices into `items` it was made of (a substitute where an image could not be read). */
interface Batch<T> {
  images: T[];
  items: number[];
}

/**
 * Seeded, resumable batches: the order of epoch e and the crop and augmentation of its k-th sample are
 * functions of (seed, e, k) alone, so a resumed run sees exactly the batches it would have seen. Batches are
 * prepared ahead (decoding and resizing run on libuv's threads) while the trainer computes.
 */
export class Loader<T extends RgbImage = Rgb8> {
  readonly batchesPerEpoch: number;
  private readonly ahead = new Map<string, Promise<Batch<T>>>();
  private orders = new Map<number, Int32Array>();
  /** Indices of images found unreadable: skipped without another try. */
  private readonly unreadable = new Set<number>();

  constructor(
    readonly items: DataItem[],
    readonly cache: DecodeCache,
    readonly imgSize: number,
    readonly batch: number,
    readonly seed: number,
    private readonly o: LoaderOptions<T> = {},
  ) {
    if (items.length < batch) throw new Error(`data: ${items.length} usable images, fewer than one batch of ${batch}`);
    this.batchesPerEpoch = Math.floor(items.length / batch); // drop_last, as the official loader
  }

  /** Micro-batch `i` of epoch `epoch`, starting the next ones in the background. */
  async get(epoch: number, i: number): Promise<T[]> {
    return (await this.batchAt(epoch, i)).images;
  }

  /** The same, with the indices of the images it holds (labels follow a substitute). */
  batchAt(epoch: number, i: number): Promise<Batch<T>> {
    const out = this.start(epoch, i);
    this.ahead.delete(`${epoch}:${i}`);
    for (let k = 1; k <= (this.o.prefetch ?? 2); k++) {
      const j = i + k;
      this.start(epoch + Math.floor(j / this.batchesPerEpoch), j % this.batchesPerEpoch);
    }
    return out;
  }

  private start(epoch: number, i: number): Promise<Batch<T>> {
    const key = `${epoch}:${i}`;
    let p = this.ahead.get(key);
    if (!p) {
      p = this.load(epoch, i);
      p.catch(() => undefined); // surfaced when awaited by get()
      this.ahead.set(key, p);
    }
    return p;
  }

  /** Indices into `items` of micro-batch `i` of epoch `epoch`, as planned (before any substitute). */
  itemsAt(epoch: number, i: number): number[] {
    const order = this.order(epoch);
    return Array.from({ length: this.batch }, (_, j) => order[i * this.batch + j]!);
  }

  /**
   * The box is drawn in the original image's coordinates, as torchvision draws it on the decoded image, then cut
   * from the cached copy, which is large enough that the box is not upsampled (docs/method.md#preprocessing).
   */
  private async load(epoch: number, i: number): Promise<Batch<T>> {
    const { minScale = 0.2, kernel, transform } = this.o;
    const samples = await Promise.all(
      Array.from({ length: this.batch }, async (_, j) => {
        const { index, img } = await this.readable(epoch, i * this.batch + j, { imgSize: this.imgSize, minScale });
        const rng = sampleRng(this.seed, epoch, i * this.batch + j);
        const box = randomCrop(rng, img.original.width, img.original.height, [minScale, 1]);
        const cropped = await applyCrop(img, scaleCrop(box, img.original, img), this.imgSize, kernel);
        return { index, image: transform ? transform(cropped, rng) : (cropped as RgbImage as T) };
      }),
    );
    return { images: samples.map((s) => s.image), items: samples.map((s) => s.index) };
  }

  /**
   * Sample `k` of the epoch's order, or where it cannot be read, the next readable one in that order: the same
   * substitute whatever the timing, so batches stay a function of (seed, epoch, index) and of which files are gone.
   */
  private async readable(epoch: number, k: number, crops: CropSource): Promise<{ index: number; img: Decoded }> {
    const order = this.order(epoch);
    for (let t = 0; t < order.length; t++) {
      const index = order[(k + t) % order.length]!;
      if (this.unreadable.has(index)) continue;
      const item = this.items[index]!;
      try {
        return { index, img: await this.cache.get(item.abs, item.hash, crops) };
      } catch (err) {
        if (!(err instanceof UnreadableImageError)) throw err;
        this.skip(index, err);
      }
    }
    throw this.tooFew();
  }

  private skip(index: number, err: UnreadableImageError): void {
    if (this.unreadable.has(index)) return; // two batches in flight found it
    this.unreadable.add(index);
    const readable = this.items.length - this.unreadable.size;
    if (readable < (this.o.minImages ?? this.batch)) throw this.tooFew(); // the one message, naming this image
    const item = this.items[index]!;
    this.o.onSkip?.(item, existsSync(item.abs) ? err.reason : 'the file is missing', readable);
  }

  private tooFew(): TooFewImagesError {
    const example = this.items[[...this.unreadable].at(-1) ?? 0]!.abs;
    return new TooFewImagesError(this.items.length - this.unreadable.size, this.items.length, this.o.minImages ?? this.batch, example);
  }

  private order(epoch: number): Int32Array {
    let order = this.orders.get(epoch);
    if (!order) {
      const rng = new Rng(seedFor(this.seed, PERMUTATION, epoch));
      order = Int32Array.from(this.items.keys());
      for (let i = order.length - 1; i > 0; i--) {
        const j = Math.floor(rng.next() * (i + 1));
        [order[i], order[j]] = [order[j]!, order[i]!];
      }
      if (this.orders.size > 2) this.orders.delete(Math.min(...this.orders.keys()));
      this.orders.set(epoch, order);
    }
    return order;
  }
}
