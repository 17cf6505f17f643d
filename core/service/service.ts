import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';
import { ApiError, isMethod, parseArgs, type ApiEvent, type Args, type Method } from '../api.js';
import { initBackend } from '../backend.js';
import { ConfigError, MODEL_SIZES, parseRunConfig, PRESETS, RunConfigSchema, type RunConfig } from '../config.js';
import { applyScan, summarize } from '../data/indexer.js';
import { homePaths, isAlive, SAMPLE_IMAGES } from '../home.js';
import type { JobHandle, Launcher } from '../jobs/protocol.js';
import { Store } from '../store/store.js';
import { estimate } from './estimate.js';
import { latestGoodCheckpoint, RunRecorder } from './recorder.js';

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
      return { ok: true, errors: [], config: r.data, estimate: estimate(r.data, images, (await initBackend()).chosen) };
    },
    'runs.list': () => this.store.runs().map((r) => ({ ...r, last: this.store.metrics(r.id).at(-1) ?? null })),
    'runs.get': (a) => {
      const run = this.run(a.id);
      return {
        run,
        metrics: this.store.metrics(run.id),
        checkpoints: this.store.checkpoints(run.id),
        previews: this.previews(run.id),
        active: this.jobs.has(run.id),
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
    const config = parseRunConfig(run.config);
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
    job.send({
      kind: 'pretrain',
      runId,
      home: this.home,
      config,
      items: this.store.images(d.id, 'ok').map((r) => ({ abs: join(d.root, r.path), hash: r.hash! })),
      resumeFrom: resume ? this.store.checkpoints(run.id).find((c) => c.step === resume.state.step)?.path : undefined,
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
