import { createHash } from 'node:crypto';
import { readFile, readdir, realpath, stat } from 'node:fs/promises';
import { basename, extname, join, relative, sep } from 'node:path';
import type { ImageRow, Store } from '../store/store.js';
import { readHeader, verify, type ImageHeader } from './decode.js';
import { IMAGE_EXTENSIONS, trainableFormat } from './formats.js';

export interface IndexOptions {
  /** Images above this many pixels are rejected before decoding (decompression bombs). */
  maxPixels?: number;
  /** Images whose shorter side is below this are rejected. */
  minSide?: number;
  concurrency?: number;
  onProgress?: (p: IndexProgress) => void;
}

export interface IndexProgress {
  done: number;
  total: number;
  filesPerS: number;
  etaS: number;
}

export interface IndexSummary {
  datasetId: number;
  root: string;
  images: number;
  added: number;
  updated: number;
  unchanged: number;
  removed: number;
  /** Files without an image extension, not looked at. */
  ignored: number;
  rejected: { path: string; reason: string }[];
  /** Folders reached a second time through a symlink (a loop, or a folder linked twice): not walked again. */
  skipped: { path: string; reason: string }[];
  duplicates: string[][];
  byFormat: Record<string, number>;
  /** Count of images by shorter side, in buckets `<64, 64–127, …, ≥1024`. */
  sizeHistogram: { label: string; count: number }[];
  seconds: number;
}

// Enough files in flight to keep sharp's and the file system's threads busy while each file waits on the other.
const DEFAULTS = { maxPixels: 80_000_000, minSide: 16, concurrency: 16 };

/** What one pass over a folder found; applying it to the store is a separate, atomic step. */
export interface ScanResult {
  root: string;
  upserts: ImageRow[];
  removed: string[];
  /** `added` counts new usable images; new rejected files are in the summary's `rejected`. */
  counts: { added: number; updated: number; unchanged: number; removed: number; ignored: number };
  skipped: IndexSummary['skipped'];
}

/** The record of a file from an earlier pass: enough to tell whether it changed. */
export type KnownFile = Pick<ImageRow, 'path' | 'size' | 'mtimeMs' | 'reason'>;

/** Resolves a folder to its real path, with a clear error when it is not a readable folder. */
export async function resolveFolder(root: string): Promise<string> {
  const real = await realpath(root).catch((err: NodeJS.ErrnoException) => {
    throw new Error(`${root}: cannot open the folder (${err.code ?? err.message})`);
  });
  if (!(await stat(real)).isDirectory()) throw new Error(`${root}: not a folder`);
  return real;
}

/** Scans a folder against what is known of it: only new or changed files (size, mtime) are decoded. Touches no database. */
export async function scanFolder(root: string, knownRows: KnownFile[], opts: IndexOptions = {}): Promise<ScanResult> {
  const o = {
    maxPixels: opts.maxPixels ?? DEFAULTS.maxPixels,
    minSide: opts.minSide ?? DEFAULTS.minSide,
    concurrency: opts.concurrency ?? DEFAULTS.concurrency,
  };
  const realRoot = await resolveFolder(root);
  const known = new Map(knownRows.map((r) => [r.path, r]));
  const { files, problems, ignored, skipped } = await walk(realRoot);
  const seen = new Set([...files.map((f) => f.rel), ...problems.map((p) => p.path)]);
  let unchanged = 0;
  const upserts = problems.filter((p) => {
    const same = known.get(p.path)?.reason === p.reason;
    if (same) unchanged++;
    return !same;
  });
  const todo = files.filter((f) => {
    const prev = known.get(f.rel);
    const same = prev && prev.size === f.size && prev.mtimeMs === f.mtimeMs;
    if (same) unchanged++;
    return !same;
  });

  let done = 0;
  const started = performance.now();
  await pool(todo, o.concurrency, async (f) => {
    upserts.push(await inspect(f, o));
    done++;
    const rate = done / Math.max((performance.now() - started) / 1000, 1e-3);
    opts.onProgress?.({ done, total: todo.length, filesPerS: rate, etaS: (todo.length - done) / rate });
  });

  const removed = [...known.keys()].filter((p) => !seen.has(p));
  const added = upserts.filter((r) => r.status === 'ok' && !known.has(r.path)).length;
  const updated = upserts.filter((r) => known.has(r.path)).length;
  return { root: realRoot, upserts, removed, counts: { added, updated, unchanged, removed: removed.length, ignored }, skipped };
}

/** Records a scan in the store and summarises the dataset as it now stands. */
export function applyScan(store: Store, scan: ScanResult, seconds: number): IndexSummary {
  const dataset = store.ensureDataset(scan.root, basename(scan.root));
  store.applyIndex(dataset.id, scan.upserts, scan.removed);
  return summarize(store, dataset.id, scan.root, { ...scan.counts, skipped: scan.skipped, seconds });
}

/** Indexes a folder into the store, incrementally. */
export async function indexFolder(store: Store, root: string, opts: IndexOptions = {}): Promise<IndexSummary> {
  const t0 = performance.now();
  const known = store.dataset(await resolveFolder(root));
  const scan = await scanFolder(root, known ? store.images(known.id) : [], opts);
  return applyScan(store, scan, (performance.now() - t0) / 1000);
}

interface FoundFile {
  abs: string;
  rel: string;
  size: number;
  mtimeMs: number;
}

/** Recursive listing that follows symlinks once (loops are cut by real path) and never throws on one entry. */
async function walk(root: string) {
  const files: FoundFile[] = [];
  const problems: ImageRow[] = [];
  const skipped: IndexSummary['skipped'] = [];
  let ignored = 0;
  const visited = new Set<string>();
  const rel = (abs: string) => relative(root, abs).split(sep).join('/');
  const reject = (abs: string, reason: string) => problems.push(rejectedRow(rel(abs), 0, 0, reason));

  async function visit(dir: string): Promise<void> {
    const real = await realpath(dir);
    if (visited.has(real))
      return void skipped.push({
        path: rel(dir),
        reason: `symlink to ${rel(real) || '.'}, a folder already indexed (a loop, or linked twice)`,
      });
    visited.add(real);
    let entries;
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch (err) {
      return void reject(dir, `folder cannot be read (${(err as NodeJS.ErrnoException).code})`);
    }
    entries.sort((a, b) => (a.name < b.name ? -1 : 1));
    // A folder's entries stat'ed together (each follows symlinks), then taken in name order.
    const stats = await Promise.all(entries.map((e) => stat(join(dir, e.name)).catch((err: NodeJS.ErrnoException) => err)));
    for (const [i, e] of entries.entries()) {
      const abs = join(dir, e.name);
      const st = stats[i]!;
      if (st instanceof Error) {
        const code = st.code;
        if (IMAGE_EXTENSIONS.has(extname(e.name).toLowerCase()) || e.isSymbolicLink())
          reject(abs, code === 'ENOENT' || code === 'ELOOP' ? 'broken or looping symlink' : `cannot stat (${code})`);
        continue;
      }
      if (st.isDirectory()) await visit(abs);
      else if (!st.isFile() || !IMAGE_EXTENSIONS.has(extname(e.name).toLowerCase())) ignored++;
      else files.push({ abs, rel: rel(abs), size: st.size, mtimeMs: st.mtimeMs });
    }
  }
  await visit(root);
  return { files, problems, ignored, skipped };
}

function rejectedRow(path: string, size: number, mtimeMs: number, reason: string): ImageRow {
  return { path, size, mtimeMs, status: 'rejected', format: null, width: null, height: null, hash: null, label: null, reason };
}

/** Reads, hashes and fully decodes one file; any problem becomes a rejected row with the reason. */
async function inspect(f: FoundFile, o: typeof DEFAULTS): Promise<ImageRow> {
  const reject = (reason: string) => rejectedRow(f.rel, f.size, f.mtimeMs, reason);
  if (f.size === 0) return reject('empty file (0 bytes)');
  let bytes: Buffer;
  try {
    bytes = await readFile(f.abs);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return reject(code === 'EACCES' || code === 'EPERM' ? 'permission denied' : `cannot read (${code})`);
  }
  let meta: ImageHeader;
  try {
    meta = await readHeader(bytes);
  } catch (err) {
    return reject(`not a decodable image (${firstLine(err)})`);
  }
  const format = trainableFormat(meta.format, meta.compression);
  if (!format) return reject(`unsupported format ${meta.format ?? 'unknown'}`);
  const { width, height } = meta;
  const tooLarge = `too large: ${width}×${height} is over the limit of ${o.maxPixels} pixels (--max-pixels raises it)`;
  if (width * height > o.maxPixels) return reject(tooLarge);
  if (Math.min(width, height) < o.minSide)
    return reject(`too small: ${width}×${height}, shorter side under ${o.minSide} px (--min-side lowers the limit)`);
  try {
    await verify(bytes, o.maxPixels, width * height);
  } catch (err) {
    // The header of some formats understates what the decoder counts (e.g. pages): still a size problem, not corruption.
    return reject(/exceeds pixel limit/.test(firstLine(err)) ? tooLarge : `corrupt or truncated ${format} (${firstLine(err)})`);
  }
  const parts = f.rel.split('/');
  return {
    path: f.rel,
    size: f.size,
    mtimeMs: f.mtimeMs,
    status: 'ok',
    format,
    width,
    height,
    hash: createHash('sha256').update(bytes).digest('hex'),
    label: parts.length > 1 ? parts[0]! : null,
    reason: null,
  };
}

const firstLine = (err: unknown) =>
  String((err as Error).message ?? err)
    .split('\n')[0]!
    .trim();

async function pool<T>(items: T[], n: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await work(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
}

const BUCKETS = [64, 128, 256, 512, 1024];

export function summarize(
  store: Store,
  datasetId: number,
  root: string,
  counts: Omit<IndexSummary, 'datasetId' | 'root' | 'images' | 'rejected' | 'skipped' | 'duplicates' | 'byFormat' | 'sizeHistogram'> &
    Partial<Pick<IndexSummary, 'skipped'>>,
): IndexSummary {
  const rows = store.images(datasetId);
  const ok = rows.filter((r) => r.status === 'ok');
  const byHash = new Map<string, string[]>();
  for (const r of ok) byHash.set(r.hash!, [...(byHash.get(r.hash!) ?? []), r.path]);
  const byFormat: Record<string, number> = {};
  for (const r of ok) byFormat[r.format!] = (byFormat[r.format!] ?? 0) + 1;
  const labels = ['<64', '64–127', '128–255', '256–511', '512–1023', '≥1024'];
  const histogram = labels.map((label) => ({ label, count: 0 }));
  for (const r of ok) histogram[BUCKETS.filter((b) => Math.min(r.width!, r.height!) >= b).length]!.count++;
  return {
    datasetId,
    root,
    images: ok.length,
    skipped: [],
    ...counts,
    rejected: rows.filter((r) => r.status === 'rejected').map((r) => ({ path: r.path, reason: r.reason! })),
    duplicates: [...byHash.values()].filter((paths) => paths.length > 1),
    byFormat,
    sizeHistogram: histogram,
  };
}
