import type { ApiEvent } from '../api.js';
import { ApiError } from '../api.js';
import type { BackendName } from '../backend.js';
import { applyScan, type IndexSummary } from '../data/indexer.js';
import { resolveEngine, type EngineChoice } from '../engine.js';
import { UserError } from '../errors.js';
import { isAlive } from '../home.js';
import type { ComputeRequest, ComputeResult, JobHandle, Launcher } from '../jobs/protocol.js';
import type { TrainJob } from '../runs/job.js';
import { begin, prepare, type RunRequest } from '../runs/lifecycle.js';
import { RunRecorder } from '../runs/recorder.js';
import { assertTorchCan } from '../runs/torch.js';
import type { ImageRow, RunStatus, Store } from '../store/store.js';
import type { Cadence, TrainEvent } from '../train/loop.js';

export interface ServiceOptions {
  /** Training jobs at once; more runs wait as 'queued'. Default 1: two trainers on one machine only slow each other. */
  concurrency?: number;
  cadence?: Cadence;
  previewEvery?: number;
  /** Checkpoints kept per run (plus the best). */
  keep?: number;
}

/** Bounds the work a crash can lose: a checkpoint every few minutes or every thousand steps, whichever first. */
const DEFAULT_CADENCE: Cadence = { everySteps: 1000, everyMinutes: 5 };

/**
 * Every job process the service starts — indexing, training (queued while `concurrency` run), and the compute jobs
 * that answer one call — and the recording of what they report. Nothing here computes: the service stays free to
 * answer while jobs work.
 */
export class Scheduler {
  private readonly training = new Map<number, JobHandle>();
  private readonly queue: TrainJob[] = [];
  private readonly indexing = new Map<string, JobHandle>();
  private readonly computing = new Set<JobHandle>();
  private probe?: Promise<ComputeResult<'probe'>>;
  /** Set once shut down: a killed job's last words arrive after the store has closed, and are dropped. */
  private closed = false;

  constructor(
    private readonly store: Store,
    private readonly home: string,
    private readonly launch: Launcher,
    private readonly emit: (e: ApiEvent) => void,
    private readonly options: ServiceOptions,
  ) {}

  /** This machine's backend, as its jobs choose it: learned once from a probe job (again after a failed probe). */
  backend(): Promise<ComputeResult<'probe'>> {
    this.probe ??= this.compute({ kind: 'probe' }).catch((err: Error) => {
      this.probe = undefined;
      throw err;
    });
    return this.probe;
  }

  /** Runs a checked request in a job process and answers its result; a user's mistake found there stays a UserError. */
  compute<K extends ComputeRequest['kind']>(
    req: Extract<ComputeRequest, { kind: K }>,
    onSteps?: (done: number, total: number) => void,
  ): Promise<ComputeResult<K>> {
    const job = this.launch();
    this.computing.add(job);
    return new Promise((resolve, reject) => {
      job.onMessage((m) => {
        if (m.type === 'steps') onSteps?.(m.done, m.total);
        else if (m.type === 'result') resolve(m.result as ComputeResult<K>);
        else if (m.type === 'error') reject(m.kind ? new UserError(m.message, m.kind) : new Error(m.message));
        else if (m.type === 'warning') console.warn(`${req.kind}: ${m.message}`);
      });
      job.onExit((code) => {
        this.computing.delete(job);
        reject(new Error(`the ${req.kind} job exited unexpectedly (code ${code})`)); // no-op once answered
      });
      job.send(req);
    });
  }

  /**
   * Indexes a folder in a job; the service records the result and emits dataset events. Refuses at once (throws) a
   * folder being indexed already; else resolves with the summary, or rejects with the job's error.
   */
  index(path: string): Promise<IndexSummary> {
    if (this.indexing.has(path)) throw new ApiError('conflict', `${path} is being indexed already`);
    const known = this.store.dataset(path);
    const job = this.launch();
    this.indexing.set(path, job);
    const upserts: ImageRow[] = [];
    return new Promise((resolve, reject) => {
      job.onMessage((m) => {
        if (this.closed) return;
        if (m.type === 'progress') this.emit({ type: 'dataset.progress', datasetPath: path, ...m.progress });
        else if (m.type === 'scan-page') upserts.push(...m.upserts);
        else if (m.type === 'scanned') {
          const summary = applyScan(this.store, { ...m.scan, upserts }, m.seconds);
          this.emit({ type: 'dataset.indexed', datasetId: summary.datasetId });
          resolve(summary);
        } else if (m.type === 'error') {
          this.emit({ type: 'dataset.error', datasetPath: path, message: m.message });
          reject(new UserError(m.message));
        }
      });
      job.onExit((code) => {
        this.indexing.delete(path);
        reject(new Error(`the indexing job exited unexpectedly (code ${code})`)); // no-op once settled
      });
      job.send({ kind: 'index', root: path, known: known ? this.store.images(known.id) : [] });
    });
  }

  /** Whether the run trains or waits for a slot. */
  isActive(runId: number): boolean {
    return this.training.has(runId) || this.queue.some((j) => j.runId === runId);
  }

  assertIdle(runId: number): void {
    if (this.isActive(runId)) throw new ApiError('conflict', `run ${runId} is running: pause it first`);
  }

  /**
   * Validates a request (no side effect until it is known good), claims the run, and starts its job — or
   * queues it while `concurrency` training jobs run.
   */
  async start(req: RunRequest, pinned?: BackendName, o: { engine?: EngineChoice; amp?: boolean } = {}): Promise<number> {
    // A pinned backend runs in the job process (which reports if it cannot load); the rest use this machine's choice.
    const { report, torch } = await this.backend();
    const continued = 'resume' in req ? req.resume : 'extend' in req ? req.extend : undefined;
    const previous = continued === undefined ? undefined : this.store.run(continued)?.backend;
    const engine = resolveEngine(o.engine, () => torch, previous);
    if (engine === 'torch' && !torch.ok) throw new UserError(`engine: torch is unavailable: ${torch.reason}`);
    const backend = engine === 'torch' ? 'torch' : (pinned ?? report.chosen);
    const prepared = prepare(this.store, this.home, req, backend, (backend === report.chosen && report.adapter) || null);
    if (engine === 'torch') assertTorchCan(prepared.spec, prepared.job.probe);
    const full = this.training.size >= (this.options.concurrency ?? 1);
    const job: TrainJob = {
      ...begin(this.store, prepared, { pid: process.pid, status: full ? 'queued' : 'running', backend }),
      cadence: this.options.cadence ?? DEFAULT_CADENCE,
      previewEvery: this.options.previewEvery ?? 25,
      engine,
      torch: { amp: o.amp },
    };
    this.emit({ type: 'run.status', runId: job.runId, status: full ? 'queued' : 'running', error: null });
    if (full) this.queue.push(job);
    else this.launchTraining(job);
    return job.runId;
  }

  pause(runId: number): void {
    const queued = this.queue.findIndex((j) => j.runId === runId);
    if (queued >= 0) {
      this.queue.splice(queued, 1);
      return this.setStatus(runId, 'paused');
    }
    const job = this.training.get(runId);
    if (!job) throw this.notHere(runId);
    job.send({ type: 'pause' });
  }

  cancel(runId: number): void {
    const queued = this.queue.findIndex((j) => j.runId === runId);
    const job = this.training.get(runId);
    if (queued < 0 && !job) throw this.notHere(runId);
    if (queued >= 0) this.queue.splice(queued, 1);
    this.training.delete(runId);
    job?.kill();
    this.setStatus(runId, 'interrupted', 'cancelled; resume continues from the last checkpoint');
  }

  /** Why this service cannot pause or cancel a run it does not train: it is not running, or another live process trains it. */
  private notHere(runId: number): ApiError {
    const run = this.store.run(runId);
    if ((run?.status === 'running' || run?.status === 'queued') && run.pid !== null && isAlive(run.pid))
      return new ApiError(
        'conflict',
        `run ${runId} is ${run.status} elsewhere (process ${run.pid}, another server or a terminal): pause it there`,
      );
    return new ApiError('conflict', `run ${runId} is not running`);
  }

  private setStatus(runId: number, status: RunStatus, error: string | null = null): void {
    this.store.updateRun(runId, { status, error, ...(status !== 'running' && status !== 'queued' && { pid: null }) });
    this.emit({ type: 'run.status', runId, status, error });
  }

  /** Starts queued runs while there is room. */
  private drain(): void {
    while (this.queue.length && this.training.size < (this.options.concurrency ?? 1)) {
      const job = this.queue.shift()!;
      this.setStatus(job.runId, 'running');
      this.launchTraining(job);
    }
  }

  /** Runs a claimed job in its own process; only this service records what it reports. */
  private launchTraining(job: TrainJob): void {
    const { runId } = job;
    const handle = this.launch();
    this.training.set(runId, handle);
    // The trainer's pid marks the run as owned: no other process takes it over while it lives.
    this.store.updateRun(runId, { pid: handle.pid ?? process.pid });
    const recorder = new RunRecorder(this.store, runId, this.options.keep);
    // A run is free once it has ended: its last checkpoint is written, only the process's exit remains.
    const release = () => this.training.get(runId) === handle && this.training.delete(runId);
    handle.onMessage((m) => {
      if (this.closed) return;
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
      if (this.closed) return;
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
    else if (e.type === 'knn') this.emit({ type: 'run.knn', runId, row: { step: e.step, top1: e.top1, top5: e.top5, seconds: e.seconds } });
    else if (e.type === 'checkpoint') this.emit({ type: 'run.checkpoint', runId, step: e.step });
    else if (e.type === 'end') this.emit({ type: 'run.status', runId, status: e.status, error: null });
    else if (e.type === 'skipped') this.emit({ type: 'run.skipped', runId, path: e.path, reason: e.reason });
  }

  /** Pauses every running run (each checkpoints) and waits for their processes to end; stops every other job. */
  async shutdown(timeoutMs: number): Promise<void> {
    for (const job of this.queue.splice(0)) this.setStatus(job.runId, 'paused');
    const running = [...this.training.values()];
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
    this.closed = true;
    for (const job of [...this.indexing.values(), ...this.computing]) job.kill();
  }
}
