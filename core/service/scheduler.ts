import { availableParallelism, totalmem } from 'node:os';
import type { ApiEvent } from '../api.js';
import { ApiError } from '../api.js';
import type { BackendName } from '../backend.js';
import { applyScan, type IndexSummary } from '../data/indexer.js';
import { resolveEngine, type EngineChoice } from '../engine.js';
import { UserError } from '../errors.js';
import { isAlive } from '../home.js';
import type { ComputeResult } from '../jobs/compute.js';
import type { ComputeRequest, JobHandle, Launcher } from '../jobs/protocol.js';
import type { TrainJob } from '../runs/train-job.js';
import { begin, prepare, type RunRequest } from '../runs/lifecycle.js';
import { RecordError, RunRecorder, type RunEvent } from '../runs/recorder.js';
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
  /** Compute and index jobs at once (default {@link jobSlots}); more wait their turn. */
  jobs?: number;
  /** Requests that may wait for a job at once (default 100); more are refused as busy. */
  waiting?: number;
}

/** What one compute or index job process takes: Node, tfjs and a model (12 analysis jobs took 2.3 GB). */
const JOB_MB = 256;

/** Compute and index jobs at once: one per core, within half of this machine's memory. */
export function jobSlots(): number {
  return Math.max(1, Math.min(availableParallelism(), Math.floor(totalmem() / 2 ** 20 / 2 / JOB_MB)));
}

/** Why a run's recording fails, and its pending retry. */
interface Stall {
  message: string;
  timer?: NodeJS.Timeout;
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
  /** Folders being indexed, by their job (undefined while it waits for a slot). */
  private readonly indexing = new Map<string, JobHandle | undefined>();
  private readonly computing = new Set<JobHandle>();
  /** Runs whose recording the database refuses, until it is recorded again. */
  private readonly stalled = new Map<number, Stall>();
  private detected?: Promise<ComputeResult<'backend'>>;
  /** Compute and index jobs running, and the requests waiting for one to end. */
  private jobs = 0;
  private readonly waiting: { resolve: () => void; reject: (err: Error) => void }[] = [];
  /** Set once shut down: a killed job's last words arrive after the store has closed, and are dropped. */
  private closed = false;

  constructor(
    private readonly store: Store,
    private readonly home: string,
    private readonly launch: Launcher,
    private readonly emit: (e: ApiEvent) => void,
    private readonly options: ServiceOptions,
  ) {}

  /** This machine's backend, as its jobs choose it: learned once from a `backend` job (again after a failed one). */
  backend(): Promise<ComputeResult<'backend'>> {
    this.detected ??= this.compute({ kind: 'backend' }).catch((err: Error) => {
      this.detected = undefined;
      throw err;
    });
    return this.detected;
  }

  /**
   * Claims one of the {@link jobSlots} for a compute or index job: now, or when a job ends. Beyond `waiting` requests
   * waiting already, refuses at once (throws) as busy: no request forks a process past the bound.
   */
  private slot(): Promise<void> {
    if (this.jobs < (this.options.jobs ?? jobSlots())) {
      this.jobs++;
      return Promise.resolve();
    }
    if (this.waiting.length >= (this.options.waiting ?? 100))
      throw new ApiError('busy', `busy: ${this.jobs} jobs run and ${this.waiting.length} requests wait for one; try again shortly`);
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  /** A job process in a claimed slot, which passes to the next waiting request (or frees) when the process exits. */
  private launchJob(): JobHandle {
    const job = this.launch();
    job.onExit(() => (this.waiting.length ? this.waiting.shift()!.resolve() : this.jobs--));
    return job;
  }

  /** Runs a checked request in a job process and answers its result; a user's mistake found there stays a UserError. */
  async compute<K extends ComputeRequest['kind']>(
    req: Extract<ComputeRequest, { kind: K }>,
    onSteps?: (done: number, total: number) => void,
  ): Promise<ComputeResult<K>> {
    await this.slot();
    const job = this.launchJob();
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
    const slot = this.slot();
    this.indexing.set(path, undefined);
    return slot.then(
      () => this.indexIn(path),
      (err: Error) => {
        this.indexing.delete(path);
        throw err;
      },
    );
  }

  private indexIn(path: string): Promise<IndexSummary> {
    const known = this.store.dataset(path);
    const job = this.launchJob();
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

  /** Whether the run trains, waits for a slot, or has events the database has not taken yet. */
  isActive(runId: number): boolean {
    return this.training.has(runId) || this.queue.some((j) => j.runId === runId) || this.stalled.has(runId);
  }

  assertIdle(runId: number): void {
    const problem = this.problem(runId);
    if (problem && !this.training.has(runId)) throw new ApiError('conflict', `${problem}: try again once the database takes writes`);
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
    if (engine === 'torch') assertTorchCan(prepared.spec);
    const full = this.training.size >= (this.options.concurrency ?? 1);
    const job: TrainJob = {
      ...begin(this.store, prepared, { pid: process.pid, status: full ? 'queued' : 'running', backend }),
      cadence: { ...(this.options.cadence ?? DEFAULT_CADENCE), ...('resume' in req && req.cadence) },
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

  /** Starts queued runs while there is room, and while no run's recording is failing (the database refuses writes). */
  private drain(): void {
    while (this.queue.length && this.training.size < (this.options.concurrency ?? 1) && !this.stalled.size) {
      const job = this.queue[0]!;
      try {
        this.setStatus(job.runId, 'running');
      } catch (err) {
        return console.error(`run ${job.runId} stays queued: ${(err as Error).message}`);
      }
      this.queue.shift();
      this.launchTraining(job);
    }
  }

  /** Why the run's recording fails, while it does (runs.get shows it: the database cannot). */
  problem(runId: number): string | undefined {
    return this.stalled.get(runId)?.message;
  }

  /**
   * Runs a claimed job in its own process; only this service records what it reports. A write the database refuses
   * throws nowhere: the run is told to pause at a checkpoint, and its recording is retried without blocking.
   */
  private launchTraining(job: TrainJob): void {
    const { runId } = job;
    const handle = this.launch();
    this.training.set(runId, handle);
    const recorder = new RunRecorder(this.store, runId, this.options.keep);
    let ended = false;
    const write = (f: () => void) => {
      try {
        f();
      } catch (err) {
        if (!(err instanceof RecordError)) throw err;
        return this.stall(recorder, handle, err);
      }
      if (ended) this.settle(recorder);
    };
    const record = (e: RunEvent) => write(() => recorder.handle(e));
    // A run is free once it has ended: its last checkpoint is written, only the process's exit remains.
    const end = () => {
      ended = true;
      if (this.training.get(runId) === handle) this.training.delete(runId);
    };
    const fail = (error: string) => {
      end();
      record({ type: 'update', fields: { status: 'failed', pid: null, error } });
      this.emit({ type: 'run.status', runId, status: 'failed', error });
      this.drain();
    };
    handle.onMessage((m) => {
      if (this.closed) return;
      if (m.type === 'backend') record({ type: 'update', fields: { backend: m.report.chosen } });
      else if (m.type === 'preview') this.emit({ type: 'run.preview', runId, step: m.step });
      else if (m.type === 'warning') console.warn(`run ${runId}: ${m.message}`);
      else if (m.type === 'error') fail(m.message);
      else if (m.type === 'train') {
        if (m.event.type === 'end') end();
        record(m.event);
        this.announce(runId, m.event);
        if (m.event.type === 'end') this.drain();
      }
    });
    handle.onExit((code) => {
      if (this.closed || ended) return;
      if (this.training.get(runId) === handle) return fail(`the training process exited unexpectedly (code ${code})`);
      ended = true; // cancelled: its last steps are recorded
      write(() => recorder.flush());
    });
    handle.send(job);
    // The trainer's pid marks the run as owned: no other process takes it over while it lives.
    record({ type: 'update', fields: { pid: handle.pid ?? process.pid } });
  }

  /**
   * The database refused the run's events (full disk, locked, I/O error): the run pauses at a checkpoint, and its
   * events, with why it paused, are retried until recorded, never by blocking.
   */
  private stall(recorder: RunRecorder, handle: JobHandle, err: RecordError): void {
    const { runId } = recorder;
    let stall = this.stalled.get(runId);
    if (!stall) {
      stall = { message: `${err.message}; the run pauses at a checkpoint` };
      this.stalled.set(runId, stall);
      console.error(stall.message);
      recorder.handle({ type: 'update', fields: { error: stall.message } });
      this.emit({ type: 'run.status', runId, status: 'running', error: stall.message });
      handle.send({ type: 'pause' });
    }
    if (!stall.timer) this.retry(recorder, stall, 250);
  }

  /** Retries a stalled run's recording, backing off to every 5 s. */
  private retry(recorder: RunRecorder, stall: Stall, delayMs: number): void {
    stall.timer = setTimeout(() => {
      stall.timer = undefined;
      if (this.closed) return;
      try {
        recorder.flush();
      } catch {
        return this.retry(recorder, stall, Math.min(2 * delayMs, 5000));
      }
      if (!this.training.has(recorder.runId)) this.settle(recorder);
    }, delayMs);
  }

  /** A stalled run that has ended and whose events are all recorded: it says where it stands, queued runs may start. */
  private settle(recorder: RunRecorder): void {
    const { runId } = recorder;
    if (!this.stalled.has(runId) || recorder.pending) return;
    this.stalled.delete(runId);
    const run = this.store.run(runId);
    if (run) this.emit({ type: 'run.status', runId, status: run.status, error: run.error });
    this.drain();
  }

  private announce(runId: number, e: TrainEvent): void {
    if (e.type === 'step') {
      const { step, epoch, samples, loss, losses, lr, imagesPerS } = e;
      this.emit({ type: 'run.metrics', runId, rows: [{ step, epoch, samples, loss, losses, lr, imagesPerS }] });
    } else if (e.type === 'eval') this.emit({ type: 'run.eval', runId, step: e.step, top1: e.top1, loss: e.loss });
    else if (e.type === 'knn')
      this.emit({ type: 'run.knn', runId, row: { step: e.step, top1: e.top1, top5: e.top5, seconds: e.seconds, probeTop1: e.probeTop1 } });
    else if (e.type === 'checkpoint') this.emit({ type: 'run.checkpoint', runId, step: e.step });
    else if (e.type === 'end') this.emit({ type: 'run.status', runId, status: e.status, error: this.problem(runId) ?? e.reason ?? null });
    else if (e.type === 'finetune')
      this.emit({ type: 'run.result', runId, result: { top1: e.top1, probeTop1: e.probeTop1, baselines: e.baselines } });
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
    for (const next of this.waiting.splice(0)) next.reject(new ApiError('conflict', 'the service is shutting down'));
    for (const { timer } of this.stalled.values()) clearTimeout(timer);
    for (const job of [...this.indexing.values(), ...this.computing]) job?.kill();
  }
}
