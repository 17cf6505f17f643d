/** A small seeded PRNG (sfc32), so that masks, initialisation and data order are reproducible and resumable. */
export class Rng {
  private s: Uint32Array;

  constructor(seed: number | Uint32Array) {
    if (typeof seed !== 'number') {
      this.s = Uint32Array.from(seed);
      return;
    }
    this.s = new Uint32Array([0x9e3779b9, 0x243f6a88, 0xb7e15162, seed >>> 0]);
    for (let i = 0; i < 12; i++) this.next();
  }

  /** Uniform in [0, 1). */
  next(): number {
    const s = this.s;
    const t = (((s[0]! + s[1]!) >>> 0) + s[3]!) >>> 0;
    s[3] = (s[3]! + 1) >>> 0;
    s[0] = s[1]! ^ (s[1]! >>> 9);
    s[1] = (s[2]! + (s[2]! << 3)) >>> 0;
    s[2] = ((s[2]! << 21) | (s[2]! >>> 11)) >>> 0;
    s[2] = (s[2]! + t) >>> 0;
    return t / 4294967296;
  }

  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }

  /** Standard normal (Box–Muller). */
  normal(): number {
    const u = 1 - this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.next());
  }

  fill(n: number): Float32Array {
    return Float32Array.from({ length: n }, () => this.next());
  }

  /** The generator's state, to save in a checkpoint. */
  state(): number[] {
    return Array.from(this.s);
  }
}

/**
 * The streams of `seedFor(seed, stream, …)`, one per kind of draw, so that no two kinds draw the same numbers and a
 * resumed run draws what it would have. Mirrored by name in core/torch/localmim_torch/data.py (STREAMS); a new one takes
 * a new id.
 */
export const STREAMS = {
  permutation: 1,
  crop: 2,
  mask: 3,
  preview: 4,
  split: 5,
  mix: 6,
  drop: 7,
  holdout: 29,
} as const;

/** A 32-bit seed from several integers (e.g. seed, epoch, index), so each draw is addressable and resumable. */
export function seedFor(...parts: number[]): number {
  let h = 0x811c9dc5;
  for (const p of parts) {
    h = Math.imul(h ^ (p >>> 0), 0x01000193);
    h = Math.imul(h ^ (h >>> 15), 0x85ebca6b);
    h ^= h >>> 13;
  }
  return h >>> 0;
}
