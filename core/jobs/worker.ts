import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';
import { renderPreview } from '../analysis/preview.js';
import { initBackend } from '../backend.js';
import { DecodeCache } from '../data/cache.js';
import { scanFolder } from '../data/indexer.js';
import { Loader } from '../data/loader.js';
import { homePaths } from '../home.js';
import { Rng, seedFor } from '../random.js';
import type { Rgb8 } from '../targets/image.js';
import { loadCheckpoint } from '../train/checkpoint.js';
import { finetune } from '../train/finetune.js';
import { pretrain } from '../train/loop.js';
import type { JobControl, JobMessage, JobRequest } from './protocol.js';

const PROBE = 4;
const PROBES = 2;

/** Runs one job in this (separate) process, reporting through `post`. */
export async function runJob(
  req: JobRequest,
  post: (m: JobMessage) => void,
  onControl: (cb: (c: JobControl) => void) => void,
): Promise<void> {
  if (req.kind === 'index') {
    const t0 = performance.now();
    const scan = await scanFolder(req.root, req.known, { onProgress: (progress) => post({ type: 'progress', progress }) });
    post({ type: 'scanned', scan, seconds: (performance.now() - t0) / 1000 });
    return;
  }
  const report = await initBackend(req.backend);
  post({ type: 'backend', report });
  if (req.kind === 'finetune') return runFinetune(req, report.chosen, post, onControl);
  const paths = homePaths(req.home);
  const { model: m, optim, seed } = req.config;
  const loader = new Loader(req.items, new DecodeCache(paths.cache), m.imgSize, optim.batch, seed);
  const probes = await Promise.all(req.items.slice(0, PROBES).map((item) => centerCrop(item.abs, m.imgSize)));
  const abort = new AbortController();
  onControl((c) => c.type === 'pause' && abort.abort());
  await pretrain({
    config: req.config,
    loader,
    backend: report.chosen,
    checkpointPath: (step) => paths.checkpoint(req.runId, step),
    checkpointEveryMinutes: req.checkpointEveryMinutes,
    resumeFrom: req.resumeFrom ? loadCheckpoint(req.resumeFrom) : undefined,
    signal: abort.signal,
    onEvent: (event) => post({ type: 'train', event }),
    afterStep: async (model, step) => {
      if (step !== 1 && step % req.previewEvery !== 0) return;
      const noise = new Rng(seedFor(seed, PROBE)).fill(probes.length * model.dims.L);
      const rendered = await renderPreview(model, probes, noise);
      const dir = join(paths.run(req.runId), 'previews', String(step));
      mkdirSync(dir, { recursive: true });
      rendered.forEach((p, b) => {
        writeFileSync(join(dir, `${b}-input.png`), p.input);
        writeFileSync(join(dir, `${b}-masked.png`), p.masked);
        p.scales.forEach((s, k) => {
          writeFileSync(join(dir, `${b}-${k}-target.png`), s.target);
          writeFileSync(join(dir, `${b}-${k}-pred.png`), s.pred);
        });
      });
      writeFileSync(
        join(dir, 'preview.json'),
        JSON.stringify({ step, probes: rendered.length, cells: rendered[0]?.scales.map((s) => s.cell) ?? [] }),
      );
      post({ type: 'preview', step });
    },
  });
}

async function runFinetune(
  req: Extract<JobRequest, { kind: 'finetune' }>,
  backend: string,
  post: (m: JobMessage) => void,
  onControl: (cb: (c: JobControl) => void) => void,
) {
  const paths = homePaths(req.home);
  const { model: m, finetune: f, seed } = req.config;
  const cache = new DecodeCache(paths.cache);
  const abort = new AbortController();
  onControl((c) => c.type === 'pause' && abort.abort());
  const init = req.initFrom ? new Map([...loadCheckpoint(req.initFrom).tensors].map(([n, t]) => [n, t.values])) : undefined;
  await finetune({
    config: req.config,
    loader: new Loader(req.train, cache, m.imgSize, f.batch, seed, 2, f.minScale),
    trainLabels: req.train.map((t) => t.label),
    val: req.val,
    cache,
    init,
    resumeFrom: req.resumeFrom ? loadCheckpoint(req.resumeFrom) : undefined,
    backend,
    checkpointPath: (step) => paths.checkpoint(req.runId, step),
    signal: abort.signal,
    onEvent: (event) => post({ type: 'train', event }),
  });
}

async function centerCrop(abs: string, size: number): Promise<Rgb8> {
  const data = await sharp(abs)
    .rotate()
    .resize(size, size, { fit: 'cover', kernel: 'cubic' })
    .removeAlpha()
    .toColourspace('srgb')
    .raw()
    .toBuffer();
  return { width: size, height: size, data: new Uint8Array(data.buffer, data.byteOffset, data.length) };
}

/** Entry point of a job process: Electron's utility process (parentPort) or a Node child (process.send). */
export function serveJob(): void {
  const parentPort = (
    process as unknown as { parentPort?: { on(e: 'message', cb: (e: { data: unknown }) => void): void; postMessage(m: unknown): void } }
  ).parentPort;
  const post = (m: JobMessage) => (parentPort ? parentPort.postMessage(m) : process.send!(m));
  const listeners: ((c: JobControl) => void)[] = [];
  let started = false;
  const onMessage = (msg: JobRequest | JobControl) => {
    if (started) return listeners.forEach((l) => l(msg as JobControl));
    started = true;
    runJob(msg as JobRequest, post, (cb) => listeners.push(cb))
      .catch((err: Error) => post({ type: 'error', message: err.message }))
      .finally(() => setImmediate(() => process.exit(0)));
  };
  if (parentPort) parentPort.on('message', (e) => onMessage(e.data as JobRequest | JobControl));
  else process.on('message', (m) => onMessage(m as JobRequest | JobControl));
}
