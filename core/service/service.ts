import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';
import { ApiError, isMethod, parseArgs, type ApiEvent, type Args, type Method } from '../api.js';
import { initBackend } from '../backend.js';
import { attentionAnalysis } from '../analysis/attention.js';
import {
  ConfigError,
  FinetuneConfigSchema,
  FinetuneRunSchema,
  modelDims,
  MODEL_SIZES,
  parseRunConfig,
  PRESETS,
  RunConfigSchema,
  type RunConfig,
} from '../config.js';
import { labeledSplit } from '../data/labels.js';
import { backboneOf, paramsOf } from '../export/backbone.js';
import { exportRun } from '../export/export.js';
import { applyScan, summarize } from '../data/indexer.js';
import { homePaths, isAlive, SAMPLE_IMAGES } from '../home.js';
import { nativeActive } from '../native.js';
import type { JobHandle, Launcher } from '../jobs/protocol.js';
import { Store } from '../store/store.js';
import { estimate } from './estimate.js';
import { checkpointFor, latestGoodCheckpoint, RunRecorder } from './recorder.js';

/**
 * The API's implementation, on top of the store and the job processes. Knows nothing of Electron or HTTP:
 * `main/ipc.ts` and `core/server` validate and forward to `call`, and relay what `subscribe` emits.
 */
export class Service {
  readonly store: Store;
  private readonly listeners = new Set<(e: ApiEvent) => void>();
  private readonly jobs = new Map<number, JobHandle>();
  private readonly indexing = new Map<string, JobHandle>();

  constructor(
    readonly home: string,
    private readonly launch: Launcher,
    private readonly options: { checkpointEveryMinutes?: number; previewEvery?: number; keep?: number } = {},
  ) {
    this.store = new Store(homePaths(home).db);
    this.store.markInterrupted(isAlive);
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
    return (this.handlers[method] as (a: unknown) => unknown)(parseArgs(method, args));
  }

  readonly handlers = {
    'app.info': async () => ({
      backend: await initBackend(),
      home: this.home,
      presets: PRESETS,
      sizes: MODEL_SIZES,
      defaults: defaultConfig(),
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
      if (!r.success) return { ok: false, errors: r.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message })) };
      const images = a.datasetId ? this.store.images(a.datasetId, 'ok').length : 0;
      const backend = (await initBackend()).chosen;
      return {
        ok: true,
        errors: [],
        config: r.data,
        estimate: estimate(r.data, images, backend === 'wasm' && nativeActive() ? 'wasm-native' : backend),
      };
    },
    'runs.list': () => this.store.runs().map((r) => ({ ...r, last: this.store.metrics(r.id).at(-1) ?? null })),
    'runs.get': (a) => {
      const run = this.run(a.id);
      return {
        run,
        metrics: this.store.metrics(run.id),
        checkpoints: this.store.checkpoints(run.id),
        previews: this.previews(run.id),
        active: this.jobs.has(run.id) && run.status === 'running',
      };
    },
    'runs.create': (a) => {
      const config = this.parseConfig(a.config);
      const d = this.dataset(a.datasetId);
      const usable = this.store.images(d.id, 'ok').length;
      if (usable < config.optim.batch)
        throw new ApiError(
          'bad-request',
          `optim.batch: the dataset has ${usable} usable images, fewer than one batch of ${config.optim.batch}`,
        );
      const run = this.store.createRun({
        name: a.name || `${config.model.size} ${config.model.variant} ${config.model.target}`,
        datasetId: d.id,
        config,
        backend: 'pending',
      });
      this.startJob(run.id);
      return { runId: run.id };
    },
    'runs.pause': (a) => {
      const job = this.jobs.get(this.run(a.id).id);
      if (!job) throw new ApiError('conflict', `run ${a.id} is not running`);
      job.send({ type: 'pause' });
      return { ok: true };
    },
    'runs.resume': (a) => {
      const run = this.run(a.id);
      if (this.jobs.has(run.id)) throw new ApiError('conflict', `run ${a.id} is already running`);
      this.startJob(run.id);
      return { ok: true };
    },
    'runs.cancel': (a) => {
      const run = this.run(a.id);
      const job = this.jobs.get(run.id);
      if (!job) throw new ApiError('conflict', `run ${a.id} is not running`);
      this.jobs.delete(run.id);
      job.kill();
      this.setStatus(run.id, 'interrupted', 'cancelled; resume continues from the last checkpoint');
      return { ok: true };
    },
    'runs.extend': (a) => {
      const run = this.run(a.id);
      if (this.jobs.has(run.id)) throw new ApiError('conflict', `run ${a.id} is running: pause it first`);
      const config = parseRunConfig(run.config);
      const next = { ...config, optim: { ...config.optim, epochs: config.optim.epochs + a.epochs } };
      this.store.db.prepare('UPDATE runs SET config = ? WHERE id = ?').run(JSON.stringify(next), run.id);
      this.startJob(run.id);
      return { ok: true, epochs: next.optim.epochs };
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
    'finetune.create': (a) => {
      const d = this.dataset(a.datasetId);
      const source = a.from ? this.checkpoint(a.from.runId, a.from.step) : undefined;
      const model = source ? backboneOf(source.run, source.checkpoint).model : this.parseConfig({ model: a.model }).model;
      const finetune = FinetuneConfigSchema.safeParse(a.finetune ?? {});
      if (!finetune.success)
        throw new ApiError('bad-request', finetune.error.issues.map((i) => `finetune.${i.path.join('.')}: ${i.message}`).join('; '));
      let split;
      try {
        split = labeledSplit(this.store.images(d.id), finetune.data.valFraction, a.seed, d.name);
      } catch (err) {
        throw new ApiError('bad-request', (err as Error).message);
      }
      const config = FinetuneRunSchema.parse({
        model,
        finetune: finetune.data,
        seed: a.seed,
        classes: split.classes,
        from: source ? { runId: source.run.id, step: source.step } : null,
      });
      const kind = config.finetune.linearProbe ? 'linear probe' : 'fine-tune';
      const run = this.store.createRun({
        name: a.name || `${kind} of ${source ? `run ${source.run.id}` : 'scratch'} on ${d.name}`,
        datasetId: d.id,
        config,
        backend: 'pending',
        kind: 'finetune',
        parentId: source?.run.id ?? null,
      });
      this.startJob(run.id);
      return { runId: run.id };
    },
    'exports.create': async (a) => {
      const run = this.run(a.runId);
      const spec = a.step === undefined ? String(run.id) : `${run.id}:${a.step}`;
      try {
        return await exportRun(this.store, spec, a.format, join(this.home, 'exports', `${spec.replace(':', '-')}-${a.format}`));
      } catch (err) {
        throw new ApiError('bad-request', (err as Error).message);
      }
    },
    'analysis.run': async (a) => {
      const run = this.run(a.runId);
      const d = this.dataset(a.datasetId);
      const row = this.store.images(d.id, 'ok').find((r) => r.path === a.path);
      if (!row) throw new ApiError('not-found', `${a.path} is not an image of dataset ${d.name}`);
      const { checkpoint } = this.checkpoint(run.id, a.step);
      const b = backboneOf(run, checkpoint);
      const S = b.model.imgSize;
      // The image path comes from the index, never from the request.
      const data = await sharp(join(d.root, row.path))
        .rotate()
        .resize(S, S, { fit: 'cover' })
        .removeAlpha()
        .toColourspace('srgb')
        .raw()
        .toBuffer();
      const img = { width: S, height: S, data: new Uint8Array(data.buffer, data.byteOffset, data.length) };
      await initBackend();
      const { g } = modelDims(b.model);
      if (a.query >= g * g) throw new ApiError('bad-request', `query: patch ${a.query} is outside the ${g}×${g} grid`);
      const layers = attentionAnalysis(paramsOf(b.tensors), b.model, b.tensors.get('pos_embed')!.values, img, a.query);
      const preview = await sharp(data, { raw: { width: S, height: S, channels: 3 } })
        .png()
        .toBuffer();
      const taps = b.model.variant === 'global' || run.kind !== 'pretrain' ? [] : modelDims(b.model).taps;
      return { runId: run.id, grid: g, query: a.query, taps, image: `data:image/png;base64,${preview.toString('base64')}`, layers };
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

  private checkpoint(runId: number, step?: number) {
    try {
      return checkpointFor(this.store, step === undefined ? String(runId) : `${runId}:${step}`);
    } catch (err) {
      throw new ApiError('not-found', (err as Error).message);
    }
  }

  private parseConfig(input: unknown): RunConfig {
    try {
      return parseRunConfig(input);
    } catch (err) {
      if (err instanceof ConfigError) throw new ApiError('bad-request', err.message);
      throw err;
    }
  }

  private previews(runId: number): number[] {
    const dir = join(homePaths(this.home).run(runId), 'previews');
    if (!existsSync(dir)) return [];
    return readdirSync(dir)
      .filter((n) => existsSync(join(dir, n, 'preview.json')))
      .map(Number)
      .sort((a, b) => a - b);
  }

  private setStatus(
    runId: number,
    status: 'running' | 'paused' | 'finished' | 'failed' | 'interrupted',
    error: string | null = null,
  ): void {
    this.store.updateRun(runId, { status, error, ...(status !== 'running' && { pid: null }) });
    this.emit({ type: 'run.status', runId, status, error });
  }

  private index(path: string): { path: string } {
    if (this.indexing.has(path)) throw new ApiError('conflict', `${path} is being indexed already`);
    const known = this.store.dataset(path);
    const job = this.launch();
    this.indexing.set(path, job);
    job.onMessage((m) => {
      if (m.type === 'progress') this.emit({ type: 'dataset.progress', datasetPath: path, ...m.progress });
      else if (m.type === 'scanned') this.emit({ type: 'dataset.indexed', datasetId: applyScan(this.store, m.scan, m.seconds).datasetId });
      else if (m.type === 'error') this.emit({ type: 'dataset.error', datasetPath: path, message: m.message });
    });
    job.onExit(() => this.indexing.delete(path));
    job.send({ kind: 'index', root: path, known: known ? this.store.images(known.id) : [] });
    return { path };
  }

  /** Starts (or resumes, from its newest intact checkpoint) a run in its own job process. */
  private startJob(runId: number): void {
    const run = this.run(runId);
    if (run.kind === 'import') throw new ApiError('conflict', `run ${runId} holds imported weights: fine-tune it, or pretrain from it`);
    const d = this.dataset(run.datasetId ?? 0);
    const resume = latestGoodCheckpoint(this.store, run.id);
    this.store.truncateMetrics(run.id, resume?.state.step ?? 0);
    const job = this.launch();
    this.jobs.set(run.id, job);
    this.store.updateRun(run.id, { status: 'running', error: null, pid: null });
    this.emit({ type: 'run.status', runId, status: 'running', error: null });
    const recorder = new RunRecorder(this.store, run.id, this.options.keep);
    job.onMessage((m) => {
      if (m.type === 'backend') this.store.updateRun(run.id, { backend: m.report.chosen });
      else if (m.type === 'preview') this.emit({ type: 'run.preview', runId, step: m.step });
      else if (m.type === 'error') {
        recorder.flush();
        this.setStatus(runId, 'failed', m.message);
      } else if (m.type === 'train') {
        const e = m.event;
        recorder.handle(e);
        if (e.type === 'step')
          this.emit({
            type: 'run.metrics',
            runId,
            rows: [
              { step: e.step, epoch: e.epoch, samples: e.samples, loss: e.loss, losses: e.losses, lr: e.lr, imagesPerS: e.imagesPerS },
            ],
          });
        else if (e.type === 'checkpoint') this.emit({ type: 'run.checkpoint', runId, step: e.step });
        else if (e.type === 'end') this.emit({ type: 'run.status', runId, status: e.status, error: null });
      }
    });
    job.onExit((code) => {
      recorder.flush();
      if (this.jobs.get(runId) === job) this.jobs.delete(runId);
      if (this.store.run(runId)?.status === 'running')
        this.setStatus(runId, 'failed', `the training process exited unexpectedly (code ${code})`);
    });
    const resumeFrom = resume ? this.store.checkpoints(run.id).find((c) => c.step === resume.state.step)?.path : undefined;
    if (run.kind === 'finetune') {
      const config = FinetuneRunSchema.parse(run.config);
      const split = labeledSplit(this.store.images(d.id), config.finetune.valFraction, config.seed, d.name);
      const item = (t: { path: string; hash: string; label: number }) => ({ abs: join(d.root, t.path), hash: t.hash, label: t.label });
      const init =
        config.from && !resumeFrom ? this.store.checkpoints(config.from.runId).find((c) => c.step === config.from!.step)?.path : undefined;
      job.send({
        kind: 'finetune',
        runId,
        home: this.home,
        config,
        train: split.train.map(item),
        val: split.val.map(item),
        initFrom: init,
        resumeFrom,
      });
      return;
    }
    job.send({
      kind: 'pretrain',
      runId,
      home: this.home,
      config: parseRunConfig(run.config),
      items: this.store.images(d.id, 'ok').map((r) => ({ abs: join(d.root, r.path), hash: r.hash! })),
      resumeFrom,
      checkpointEveryMinutes: this.options.checkpointEveryMinutes ?? 10,
      previewEvery: this.options.previewEvery ?? 25,
    });
  }

  /** Pauses every running run (each checkpoints) and waits for their processes to end, e.g. on quit. */
  async shutdown(timeoutMs = 60_000): Promise<void> {
    const running = [...this.jobs];
    await Promise.race([
      Promise.all(
        running.map(
          ([, job]) =>
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

function defaultConfig(): RunConfig {
  return parseRunConfig({ model: { imgSize: 64, patchSize: 8 } });
}

export type ServiceResult<M extends Method> = Awaited<ReturnType<Service['handlers'][M]>>;
export type { Args };
