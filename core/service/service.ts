import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';
import { ApiError, isMethod, parseArgs, type ApiEvent, type Args, type Method } from '../api.js';
import { attentionAnalysis, checkAnalyzable } from '../analysis/attention.js';
import { analyzeSet, chooseImages } from '../analysis/set.js';
import { computePath, initBackend, type BackendName } from '../backend.js';
import {
  ConfigError,
  describeIssue,
  FinetuneConfigSchema,
  modelDims,
  NEW_RUN,
  newRunConfig,
  MODEL_SIZES,
  SWIN_SIZES,
  presetFor,
  sizeDefaults,
  type Preset,
  parseRunConfig,
  PRESETS,
  RunConfigSchema,
  type ModelConfig,
} from '../config.js';
import { applyScan, indexFolder, summarize } from '../data/indexer.js';
import { evalImage } from '../data/preprocess.js';
import { UserError } from '../errors.js';
import { backboneOf, paramsOf } from '../export/backbone.js';
import { exportRun } from '../export/export.js';
import { homePaths, isAlive, removeStaleTempsIn, SAMPLE_IMAGES } from '../home.js';
import type { JobHandle, Launcher } from '../jobs/protocol.js';
import { checkpointFor } from '../runs/checkpoints.js';
import { estimate } from '../runs/estimate.js';
import type { TrainJob } from '../runs/job.js';
import { begin, memoryProblem, prepare, type RunRequest } from '../runs/lifecycle.js';
import { recheckDataset } from '../runs/recheck.js';
import { RunRecorder } from '../runs/recorder.js';
import { scaleOut } from '../scale/job.js';
import { optimOf, specOf } from '../runs/spec.js';
import { Store, type ImageRow, type RunRow, type RunStatus } from '../store/store.js';
import type { Cadence, TrainEvent } from '../train/loop.js';

export interface ServiceOptions {
  /** Training jobs at once; more runs wait as 'queued'. Default 1: two trainers on one machine only slow each other. */
  concurrency?: number;
  cadence?: Cadence;
  previewEvery?: number;
  /** Checkpoints kept per run (plus the best). */
  keep?: number;
}

/**
 * The API's implementation, on top of the store and the job processes. Knows nothing of Electron or HTTP:
 * `main/` and `core/server` validate and forward to `call`, and relay what `subscribe` emits.
 */
export class Service {
  readonly store: Store;
  private readonly listeners = new Set<(e: ApiEvent) => void>();
  private readonly jobs = new Map<number, JobHandle>();
  private readonly queue: TrainJob[] = [];
  private readonly indexing = new Map<string, JobHandle>();

  constructor(
    readonly home: string,
    private readonly launch: Launcher,
    private readonly options: ServiceOptions = {},
  ) {
    this.store = new Store(homePaths(home).db);
    this.store.markInterrupted(isAlive);
    removeStaleTempsIn(home);
  }

  subscribe(listener: (e: ApiEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(e: ApiEvent): void {
    for (const l of this.listeners) l(e);
  }

  /** One entry point for both transports: unknown methods and bad arguments are ApiErrors. */
  async call(method: unknown, args: unknown): Promise<unknown> {
    if (!isMethod(method)) throw new ApiError('not-found', `unknown method ${String(method).slice(0, 100)}`);
    try {
      return await (this.handlers[method] as (a: unknown) => unknown)(parseArgs(method, args));
    } catch (err) {
      if (err instanceof UserError) throw new ApiError(err.kind, err.message);
      if (err instanceof ConfigError) throw new ApiError('bad-request', err.message);
      throw err;
    }
  }

  readonly handlers = {
    'app.info': async () => ({
      backend: await initBackend(),
      home: this.home,
      presets: PRESETS,
      sizes: MODEL_SIZES,
      /** Swin sizes, and what each brings to a new run: its defaults and each preset as it applies to it (presetFor). */
      swinSizes: SWIN_SIZES,
      sizeDefaults: Object.fromEntries(
        Object.keys(SWIN_SIZES).map((size) => [
          size,
          { ...sizeDefaults(size), presets: Object.fromEntries(Object.keys(PRESETS).map((p) => [p, presetFor(p as Preset, size)])) },
        ]),
      ),
      defaults: newRunConfig(),
      defaultPreset: NEW_RUN.preset,
      probe: FinetuneConfigSchema.parse({ linearProbe: true }),
    }),
    'datasets.list': () => this.store.datasetSummaries(),
    'datasets.add': (a) => this.index(a.path),
    'datasets.addSample': () => this.index(SAMPLE_IMAGES),
    'datasets.get': (a) => {
      const d = this.dataset(a.id);
      return {
        ...summarize(this.store, d.id, d.root, { added: 0, updated: 0, unchanged: 0, removed: 0, ignored: 0, seconds: 0 }),
        name: d.name,
        indexedAt: d.indexedAt,
      };
    },
    'datasets.thumbnails': async (a) => {
      const d = this.dataset(a.id);
      const rows = this.store.images(d.id, 'ok');
      // Paths come from the index, never from the request.
      const items = await Promise.all(
        rows.slice(a.offset, a.offset + a.limit).map(async (r) => {
          const jpeg = await sharp(join(d.root, r.path))
            .rotate()
            .resize(96, 96, { fit: 'cover' })
            .jpeg({ quality: 70 })
            .toBuffer()
            .catch(() => undefined);
          return {
            path: r.path,
            label: r.label,
            width: r.width,
            height: r.height,
            src: jpeg ? `data:image/jpeg;base64,${jpeg.toString('base64')}` : null,
          };
        }),
      );
      return { total: rows.length, items };
    },
    'config.check': async (a) => {
      const r = RunConfigSchema.safeParse(a.config ?? {});
      if (!r.success)
        return {
          ok: false,
          errors: r.error.issues.map((i) => ({
            path: i.path.join('.'),
            message: i.code === 'unrecognized_keys' ? describeIssue(i) : i.message,
          })),
        };
      const images = a.datasetId ? this.store.images(a.datasetId, 'ok').length : 0;
      const backend = (await initBackend()).chosen;
      const e = estimate(r.data, images, computePath(backend));
      const problem = memoryProblem(r.data, backend);
      return { ok: !problem, errors: problem ? [{ path: 'model', message: problem }] : [], config: r.data, estimate: e };
    },
    'runs.list': () => this.store.runs().map((r) => ({ ...r, last: this.store.metrics(r.id).at(-1) ?? null })),
    'runs.get': (a) => {
      const run = this.run(a.id);
      return {
        run,
        metrics: this.store.metrics(run.id),
        checkpoints: this.store.checkpoints(run.id),
        previews: this.previews(run.id),
        active: this.jobs.has(run.id) || this.queue.some((j) => j.runId === run.id),
      };
    },
    'runs.create': async (a) => {
      const config = parseRunConfig(a.config ?? {});
      return { runId: await this.start({ new: 'pretrain', datasetId: a.datasetId, config, name: a.name }, a.backend) };
    },
    'runs.pause': (a) => {
      const run = this.run(a.id);
      const queued = this.queue.findIndex((j) => j.runId === run.id);
      if (queued >= 0) {
        this.queue.splice(queued, 1);
        this.setStatus(run.id, 'paused');
        return { ok: true };
      }
      const job = this.jobs.get(run.id);
      if (!job) throw new ApiError('conflict', `run ${a.id} is not running`);
      job.send({ type: 'pause' });
      return { ok: true };
    },
    'runs.resume': async (a) => {
      this.assertIdle(a.id);
      const check = await recheckDataset(this.store, a.id, a.data, (root) => indexFolder(this.store, root));
      await this.start({ resume: a.id, restart: a.restart, datasetId: check?.datasetId }, a.backend);
      return { ok: true, dataset: check?.line ?? null };
    },
    'runs.cancel': (a) => {
      const run = this.run(a.id);
      const queued = this.queue.findIndex((j) => j.runId === run.id);
      const job = this.jobs.get(run.id);
      if (queued < 0 && !job) throw new ApiError('conflict', `run ${a.id} is not running`);
      if (queued >= 0) this.queue.splice(queued, 1);
      this.jobs.delete(run.id);
      job?.kill();
      this.setStatus(run.id, 'interrupted', 'cancelled; resume continues from the last checkpoint');
      return { ok: true };
    },
    'runs.extend': async (a) => {
      this.assertIdle(a.id);
      await this.start({ extend: a.id, epochs: a.epochs });
      const run = this.run(a.id);
      return { ok: true, epochs: optimOf(specOf(run)).epochs };
    },
    'runs.update': (a) => {
      this.run(a.id);
      this.store.updateRun(a.id, {
        ...(a.name !== undefined && { name: a.name }),
        ...(a.notes !== undefined && { notes: a.notes }),
        ...(a.tags && { tags: a.tags }),
      });
      return this.store.run(a.id);
    },
    'runs.preview': (a) => {
      const dir = join(homePaths(this.home).run(this.run(a.id).id), 'previews', String(a.step));
      if (!existsSync(join(dir, 'preview.json'))) throw new ApiError('not-found', `run ${a.id} has no preview at step ${a.step}`);
      const meta = JSON.parse(readFileSync(join(dir, 'preview.json'), 'utf8')) as { step: number; probes: number; cells: number[] };
      const url = (f: string) => `data:image/png;base64,${readFileSync(join(dir, f)).toString('base64')}`;
      return {
        step: meta.step,
        cells: meta.cells,
        probes: Array.from({ length: meta.probes }, (_, b) => ({
          input: url(`${b}-input.png`),
          masked: url(`${b}-masked.png`),
          scales: meta.cells.map((cell, k) => ({ cell, target: url(`${b}-${k}-target.png`), pred: url(`${b}-${k}-pred.png`) })),
        })),
      };
    },
    'finetune.create': async (a) => {
      const from = a.from && (a.from.step === undefined ? String(a.from.runId) : `${a.from.runId}:${a.from.step}`);
      const model = a.from ? undefined : parseRunConfig({ model: a.model }).model;
      const req = { new: 'finetune' as const, datasetId: a.datasetId, from, model, finetune: a.finetune, seed: a.seed, name: a.name };
      return { runId: await this.start(req) };
    },
    'exports.create': async (a) => {
      const run = this.run(a.runId);
      const spec = a.step === undefined ? String(run.id) : `${run.id}:${a.step}`;
      return exportRun(this.store, spec, a.format, join(this.home, 'exports', `${spec.replace(':', '-')}-${a.format}`));
    },
    'jobs.scaleOut': async (a) => {
      const d = this.dataset(a.datasetId);
      const name = a.runId === undefined ? `new-${Date.now()}` : `run-${this.run(a.runId).id}${a.step === undefined ? '' : `-${a.step}`}`;
      const from = a.runId === undefined ? { config: a.config } : { run: a.step === undefined ? String(a.runId) : `${a.runId}:${a.step}` };
      await initBackend();
      const job = await scaleOut(this.store, { from, data: d.root, out: freshDir(join(this.home, 'jobs', name)) });
      return { out: job.out, images: job.images, readme: job.readme };
    },
    'analysis.run': async (a) => {
      const run = this.run(a.runId);
      const d = this.dataset(a.datasetId);
      const row = this.store.images(d.id, 'ok').find((r) => r.path === a.path);
      if (!row) throw new ApiError('not-found', `${a.path} is not an image of dataset ${d.name}`);
      const { checkpoint } = checkpointFor(this.store, a.step === undefined ? String(run.id) : `${run.id}:${a.step}`);
      const b = backboneOf(run, checkpoint);
      checkAnalyzable(b.model, run.id, 'the attention screen');
      const { g } = modelDims(b.model);
      if (a.query >= g * g) throw new ApiError('bad-request', `query: patch ${a.query} is outside the ${g}×${g} grid`);
      // The image path comes from the index, never from the request.
      const img = await evalImage(join(d.root, row.path), b.model.imgSize);
      await initBackend();
      const layers = await attentionAnalysis(paramsOf(b.tensors), b.model, img, a.query);
      const png = await sharp(img.data, { raw: { width: img.width, height: img.height, channels: 3 } })
        .png()
        .toBuffer();
      return {
        runId: run.id,
        grid: g,
        query: a.query,
        taps: tapped(run, b.model),
        image: `data:image/png;base64,${png.toString('base64')}`,
        layers,
      };
    },
    'analysis.set': async (a) => {
      const run = this.run(a.runId);
      const d = this.dataset(a.datasetId);
      const all = this.store.images(d.id, 'ok').map((r) => r.path);
      if (!all.length) throw new ApiError('bad-request', `dataset ${d.name} has no usable images`);
      const { checkpoint } = checkpointFor(this.store, a.step === undefined ? String(run.id) : `${run.id}:${a.step}`);
      const b = backboneOf(run, checkpoint);
      checkAnalyzable(b.model, run.id, 'the attention screen');
      const paths = chooseImages(all, a.images, a.seed);
      // The image paths come from the index, never from the request.
      const images = await Promise.all(paths.map((p) => evalImage(join(d.root, p), b.model.imgSize)));
      await initBackend();
      const set = await analyzeSet(paramsOf(b.tensors), b.model, images, a.seed, { run, checkpoint });
      return {
        runId: run.id,
        images: { root: d.root, requested: a.images, used: paths.length, seed: a.seed, paths },
        taps: tapped(run, b.model),
        ...set,
      };
    },
  } satisfies { [M in Method]: (a: ReturnType<typeof parseArgs<M>>) => unknown };

  private dataset(id: number) {
    const d = this.store.datasetById(id);
    if (!d) throw new ApiError('not-found', `no dataset ${id}`);
    return d;
  }

  private run(id: number) {
    const r = this.store.run(id);
    if (!r) throw new ApiError('not-found', `no run ${id}`);
    return r;
  }

  private assertIdle(id: number): void {
    if (this.jobs.has(this.run(id).id) || this.queue.some((j) => j.runId === id))
      throw new ApiError('conflict', `run ${id} is running: pause it first`);
  }

  private previews(runId: number): number[] {
    const dir = join(homePaths(this.home).run(runId), 'previews');
    if (!existsSync(dir)) return [];
    return readdirSync(dir)
      .filter((n) => existsSync(join(dir, n, 'preview.json')))
      .map(Number)
      .sort((a, b) => a - b);
  }

  private setStatus(runId: number, status: RunStatus, error: string | null = null): void {
    this.store.updateRun(runId, { status, error, ...(status !== 'running' && status !== 'queued' && { pid: null }) });
    this.emit({ type: 'run.status', runId, status, error });
  }

  private index(path: string): { path: string } {
    if (this.indexing.has(path)) throw new ApiError('conflict', `${path} is being indexed already`);
    const known = this.store.dataset(path);
    const job = this.launch();
    this.indexing.set(path, job);
    const upserts: ImageRow[] = [];
    job.onMessage((m) => {
      if (m.type === 'progress') this.emit({ type: 'dataset.progress', datasetPath: path, ...m.progress });
      else if (m.type === 'scan-page') upserts.push(...m.upserts);
      else if (m.type === 'scanned')
        this.emit({ type: 'dataset.indexed', datasetId: applyScan(this.store, { ...m.scan, upserts }, m.seconds).datasetId });
      else if (m.type === 'error') this.emit({ type: 'dataset.error', datasetPath: path, message: m.message });
    });
    job.onExit(() => this.indexing.delete(path));
    job.send({ kind: 'index', root: path, known: known ? this.store.images(known.id) : [] });
    return { path };
  }

  /**
   * Validates a request (no side effect until it is known good), claims the run, and starts its job — or
   * queues it while `concurrency` training jobs run.
   */
  private async start(req: RunRequest, pinned?: BackendName): Promise<number> {
    // A pinned backend runs in the job process (which reports if it cannot load); the rest use this machine's choice.
    const backend = pinned ?? (await initBackend()).chosen;
    const prepared = prepare(this.store, this.home, req, backend);
    const full = this.jobs.size >= (this.options.concurrency ?? 1);
    const job: TrainJob = {
      ...begin(this.store, prepared, { pid: process.pid, status: full ? 'queued' : 'running', backend }),
      cadence: this.options.cadence ?? DEFAULT_CADENCE,
      previewEvery: this.options.previewEvery ?? 25,
    };
    this.emit({ type: 'run.status', runId: job.runId, status: full ? 'queued' : 'running', error: null });
    if (full) this.queue.push(job);
    else this.launchTraining(job);
    return job.runId;
  }

  /** Starts queued runs while there is room. */
  private drain(): void {
    while (this.queue.length && this.jobs.size < (this.options.concurrency ?? 1)) {
      const job = this.queue.shift()!;
      this.setStatus(job.runId, 'running');
      this.launchTraining(job);
    }
  }

  /** Runs a claimed job in its own process; only this service records what it reports. */
  private launchTraining(job: TrainJob): void {
    const { runId } = job;
    const handle = this.launch();
    this.jobs.set(runId, handle);
    // The trainer's pid marks the run as owned: no other process takes it over while it lives.
    this.store.updateRun(runId, { pid: handle.pid ?? process.pid });
    const recorder = new RunRecorder(this.store, runId, this.options.keep);
    // A run is free once it has ended: its last checkpoint is written, only the process's exit remains.
    const release = () => this.jobs.get(runId) === handle && this.jobs.delete(runId);
    handle.onMessage((m) => {
      if (m.type === 'backend') this.store.updateRun(runId, { backend: m.report.chosen });
      else if (m.type === 'preview') this.emit({ type: 'run.preview', runId, step: m.step });
      else if (m.type === 'warning') console.warn(`run ${runId}: ${m.message}`);
      else if (m.type === 'error') {
        recorder.flush();
        release();
        this.setStatus(runId, 'failed', m.message);
        this.drain();
      } else if (m.type === 'train') {
        if (m.event.type === 'end') release();
        this.record(recorder, m.event);
        if (m.event.type === 'end') this.drain();
      }
    });
    handle.onExit((code) => {
      recorder.flush();
      if (release() && this.store.run(runId)?.status === 'running')
        this.setStatus(runId, 'failed', `the training process exited unexpectedly (code ${code})`);
      this.drain();
    });
    handle.send(job);
  }

  private record(recorder: RunRecorder, e: TrainEvent): void {
    const { runId } = recorder;
    recorder.handle(e);
    if (e.type === 'step') {
      const { step, epoch, samples, loss, losses, lr, imagesPerS } = e;
      this.emit({ type: 'run.metrics', runId, rows: [{ step, epoch, samples, loss, losses, lr, imagesPerS }] });
    } else if (e.type === 'eval') this.emit({ type: 'run.eval', runId, step: e.step, top1: e.top1, loss: e.loss });
    else if (e.type === 'checkpoint') this.emit({ type: 'run.checkpoint', runId, step: e.step });
    else if (e.type === 'end') this.emit({ type: 'run.status', runId, status: e.status, error: null });
    else if (e.type === 'skipped') this.emit({ type: 'run.skipped', runId, path: e.path, reason: e.reason });
  }

  /** Pauses every running run (each checkpoints) and waits for their processes to end, e.g. on quit. */
  async shutdown(timeoutMs = 60_000): Promise<void> {
    for (const job of this.queue.splice(0)) this.setStatus(job.runId, 'paused');
    const running = [...this.jobs.values()];
    await Promise.race([
      Promise.all(
        running.map(
          (job) =>
            new Promise<void>((resolve) => {
              job.onExit(() => resolve());
              job.send({ type: 'pause' });
            }),
        ),
      ),
      new Promise((resolve) => setTimeout(resolve, timeoutMs)),
    ]);
    for (const job of this.indexing.values()) job.kill();
    this.store.close();
  }
}

/** Bounds the work a crash can lose: a checkpoint every few minutes or every thousand steps, whichever first. */
const DEFAULT_CADENCE: Cadence = { everySteps: 1000, everyMinutes: 5 };

/** The blocks whose output a pretraining run's decoders read (none for the global variant, nor outside pretraining). */
function tapped(run: RunRow, model: ModelConfig): number[] {
  return model.variant === 'global' || run.kind !== 'pretrain' ? [] : modelDims(model).taps;
}

export type ServiceResult<M extends Method> = Awaited<ReturnType<Service['handlers'][M]>>;
export type { Args };

/** `path`, or `path-2`, `path-3`, … when it is taken. */
function freshDir(path: string): string {
  let out = path;
  for (let i = 2; existsSync(out); i++) out = `${path}-${i}`;
  return out;
}
