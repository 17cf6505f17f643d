import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { writeAtomic } from '../atomic.js';
import type { ModelConfig } from '../config.js';
import type { DecodeCache } from '../data/cache.js';
import { removeStaleTemps } from '../home.js';
import type { ProbeFeatures } from '../model/classifier.js';
import type { DataItem } from '../data/loader.js';
import type { Param } from '../model/module.js';
import { decodeSafetensors, encodeSafetensors } from '../safetensors.js';
import { embedItems } from './knn.js';

/** Images per shard: what an interrupted run of a large folder loses at most. */
export const SHARD = 256;

/** One image of the folder: its file, content hash, path in the folder and class folder. */
export interface EmbedItem {
  abs: string;
  hash: string;
  path: string;
  label: string | null;
}

export interface Embeddings {
  /** Row-major `[N, D]`. */
  features: Float32Array;
  dim: number;
  items: { path: string; label: string | null }[];
}

/** Features `[N, D]` of a shard's images, `onBatch` told how many are done. */
export type EmbedShard = (
  items: DataItem[],
  cache?: DecodeCache,
  onBatch?: (done: number) => void,
) => Promise<{ features: Float32Array; dim: number }>;

/** `out` with its extension replaced: the paths' JSONL beside the features. */
export const pathsFile = (out: string) => out.replace(/\.(safetensors|npy)$/, '') + '.jsonl';

/** The key a result is valid for: the weights and the images, in order. */
const keyOf = (weights: string, items: EmbedItem[]) => {
  const h = createHash('sha256').update(weights);
  for (const it of items) h.update(`\n${it.path}\t${it.hash}`);
  return h.digest('hex');
};

/**
 * Mean-pooled backbone features of every item, written as `out` (safetensors `features [N, D]` whose metadata holds the
 * key, or `.npy`) and the paths and labels as JSONL. Work goes in shards of {@link SHARD} images under `out.parts/`, each
 * keyed by the weights (`weights`: e.g. the checkpoint's hash), the kind of features and its images, so a rerun skips
 * the shards already written, and a finished result whose key matches, entirely.
 */
export async function embedFolder(
  P: Param,
  model: ModelConfig,
  items: EmbedItem[],
  o: {
    out: string;
    weights: string;
    cache?: DecodeCache;
    shard?: number;
    onProgress?: (done: number, total: number) => void;
    features?: ProbeFeatures;
    /** What embeds a shard: tfjs here by default, or the torch engine (core/runs/torch.ts torchEmbedder). */
    embed?: EmbedShard;
  },
): Promise<{ out: string; paths: string; images: number; dim: number; computed: number }> {
  const weights = o.features && o.features !== 'last' ? `${o.weights}:${o.features}` : o.weights;
  const key = keyOf(weights, items);
  const paths = pathsFile(o.out);
  const done = existsSync(o.out) && existsSync(paths) && readKey(o.out) === key;
  if (done) return { out: o.out, paths, images: items.length, dim: readDim(o.out), computed: 0 };
  const parts = `${o.out}.parts`;
  mkdirSync(parts, { recursive: true });
  removeStaleTemps(parts);
  const shards: Float32Array[] = [];
  let dim = 0;
  let computed = 0;
  const size = o.shard ?? SHARD;
  for (let s = 0; s * size < items.length; s++) {
    const shard = items.slice(s * size, (s + 1) * size);
    const file = join(parts, `${String(s).padStart(5, '0')}.safetensors`);
    const shardKey = keyOf(weights, shard);
    let features = existsSync(file) && readKey(file) === shardKey ? readEmbeddings(file) : undefined;
    if (!features) {
      const at = s * size;
      const embed = o.embed ?? ((items, cache, onBatch) => embedItems(P, model, items, cache, onBatch, o.features));
      const e = await embed(shard, o.cache, (n) => o.onProgress?.(at + n, items.length));
      writeAtomic(file, encodeFeatures(e.features, e.dim, shardKey));
      features = e;
      computed += shard.length;
    }
    dim = features.dim;
    shards.push(features.features);
    o.onProgress?.(Math.min((s + 1) * size, items.length), items.length);
  }
  const all = new Float32Array(items.length * dim);
  shards.reduce((at, f) => (all.set(f, at), at + f.length), 0);
  mkdirSync(dirname(o.out), { recursive: true });
  writeAtomic(paths, items.map((it) => JSON.stringify({ path: it.path, label: it.label }) + '\n').join(''));
  writeAtomic(o.out, o.out.endsWith('.npy') ? encodeNpy(all, [items.length, dim]) : encodeFeatures(all, dim, key));
  if (o.out.endsWith('.npy')) writeAtomic(`${o.out}.key`, key);
  rmSync(parts, { recursive: true, force: true });
  return { out: o.out, paths, images: items.length, dim, computed };
}

const encodeFeatures = (features: Float32Array, dim: number, key: string) =>
  encodeSafetensors(new Map([['features', { shape: [features.length / Math.max(1, dim), dim], values: features }]]), { key });

function readKey(file: string): string | undefined {
  try {
    if (file.endsWith('.npy')) return readFileSync(`${file}.key`, 'utf8');
    const bytes = readFileSync(file);
    const n = Number(bytes.readBigUInt64LE(0));
    return (JSON.parse(bytes.subarray(8, 8 + n).toString('utf8')) as { __metadata__?: { key?: string } }).__metadata__?.key;
  } catch {
    return undefined;
  }
}

function readDim(file: string): number {
  if (!file.endsWith('.npy')) return readEmbeddings(file).dim;
  const header = readFileSync(file).subarray(0, 256).toString('latin1');
  return Number(/'shape': \(\d+, (\d+)\)/.exec(header)?.[1] ?? 0);
}

/** Features written by {@link embedFolder} (safetensors). */
export function readEmbeddings(file: string): { features: Float32Array; dim: number } {
  const t = decodeSafetensors(readFileSync(file), file).tensors.get('features');
  if (!t) throw new Error(`${file}: no features tensor`);
  return { features: t.values, dim: t.shape[1]! };
}

/** NumPy's `.npy` (format 1.0): little-endian float32, C order. */
function encodeNpy(values: Float32Array, shape: number[]): Buffer {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(', ')}), }`;
  header += ' '.repeat((64 - ((10 + header.length + 1) % 64)) % 64) + '\n';
  const pre = Buffer.alloc(10);
  pre.write('\x93NUMPY', 0, 'latin1');
  pre.writeUInt8(1, 6);
  pre.writeUInt16LE(header.length, 8);
  return Buffer.concat([pre, Buffer.from(header, 'latin1'), Buffer.from(values.buffer, values.byteOffset, values.byteLength)]);
}

/** The `k` items most cosine-similar to item `q` (itself excluded), most similar first. */
export function nearest(e: { features: Float32Array; dim: number }, q: number, k: number): { index: number; score: number }[] {
  const { features: X, dim } = e;
  const n = X.length / dim;
  const norm = (i: number) => Math.sqrt(X.subarray(i * dim, (i + 1) * dim).reduce((s, v) => s + v * v, 0)) || 1;
  const nq = norm(q);
  const scores: { index: number; score: number }[] = [];
  for (let i = 0; i < n; i++) {
    if (i === q) continue;
    let dot = 0;
    for (let d = 0; d < dim; d++) dot += X[q * dim + d]! * X[i * dim + d]!;
    scores.push({ index: i, score: dot / (nq * norm(i)) });
  }
  return scores.sort((a, b) => b.score - a.score).slice(0, k);
}

/**
 * The first two principal components of `[N, D]` features: the covariance `[D, D]`, then power iteration with deflation.
 * Returns each row's coordinates `[N, 2]` and the share of the variance each component explains.
 */
export function pca2(e: { features: Float32Array; dim: number }, iterations = 200): { points: [number, number][]; explained: number[] } {
  const { features: X, dim: D } = e;
  const n = X.length / D;
  const mean = new Float64Array(D);
  for (let i = 0; i < n; i++) for (let d = 0; d < D; d++) mean[d]! += X[i * D + d]! / n;
  const C = new Float64Array(D * D);
  const row = new Float64Array(D);
  for (let i = 0; i < n; i++) {
    for (let d = 0; d < D; d++) row[d] = X[i * D + d]! - mean[d]!;
    for (let a = 0; a < D; a++) for (let b = 0; b < D; b++) C[a * D + b]! += (row[a]! * row[b]!) / Math.max(1, n - 1);
  }
  const total = Array.from({ length: D }, (_, d) => C[d * D + d]!).reduce((s, v) => s + v, 0) || 1;
  const components: Float64Array[] = [];
  const explained: number[] = [];
  for (let c = 0; c < 2; c++) {
    let v = Float64Array.from({ length: D }, (_, d) => 1 / Math.sqrt(D) + (d === c ? 1 : 0)); // deterministic start
    let lambda = 0;
    for (let it = 0; it < iterations; it++) {
      const w = new Float64Array(D);
      for (let a = 0; a < D; a++) for (let b = 0; b < D; b++) w[a]! += C[a * D + b]! * v[b]!;
      lambda = Math.hypot(...w);
      if (!lambda) break;
      v = w.map((x) => x / lambda);
    }
    for (let a = 0; a < D; a++) for (let b = 0; b < D; b++) C[a * D + b]! -= lambda * v[a]! * v[b]!; // deflate
    components.push(v);
    explained.push(lambda / total);
  }
  const points = Array.from({ length: n }, (_, i) => {
    const [p, q] = components.map((v) => v.reduce((s, x, d) => s + x * (X[i * D + d]! - mean[d]!), 0));
    return [p!, q!] as [number, number];
  });
  return { points, explained };
}
