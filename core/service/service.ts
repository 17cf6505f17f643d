import { ApiError, isMethod, parseArgs, type ApiEvent, type Args, type Method } from '../api.js';
import { ConfigError } from '../config.js';
import { UserError } from '../errors.js';
import { homePaths, isAlive, removeStaleTempsIn } from '../home.js';
import type { Launcher } from '../jobs/protocol.js';
import { reconcileCheckpoints, recoverRuns } from '../runs/reconcile.js';
import { Store } from '../store/store.js';
import { analysisHandlers } from './analysis.js';
import { datasetHandlers } from './datasets.js';
import { embeddingHandlers } from './embeddings.js';
import type { Context, Handlers } from './context.js';
import { runHandlers } from './runs.js';
import { Scheduler, type ServiceOptions } from './scheduler.js';

export type { ServiceOptions };

/**
 * How long a write waits for another program's lock on the database: better-sqlite3 waits by blocking, and every
 * call and event waits with it. A run's recording retries later instead (core/service/scheduler.ts).
 */
const BUSY_MS = 200;

/**
 * The API's implementation, on top of the store and the job processes. Knows nothing of Electron or HTTP:
 * `main/` and `core/server` validate and forward to `call`, and relay what `subscribe` emits. It computes nothing
 * itself (core/service/scheduler.ts runs every job), so it answers while jobs work.
 */
export class Service {
  readonly store: Store;
  private readonly listeners = new Set<(e: ApiEvent) => void>();
  private readonly scheduler: Scheduler;
  readonly handlers;

  constructor(
    readonly home: string,
    launch: Launcher,
    options: ServiceOptions = {},
  ) {
    this.store = new Store(homePaths(home).db, { busyTimeoutMs: BUSY_MS });
    this.store.markInterrupted(isAlive);
    for (const line of recoverRuns(this.store, home)) console.warn(line);
    removeStaleTempsIn(home);
    for (const r of this.store.runs())
      if (r.status !== 'running' && r.status !== 'queued') reconcileCheckpoints(this.store, r.id, homePaths(home).run(r.id));
    const emit = (e: ApiEvent) => this.emit(e);
    this.scheduler = new Scheduler(this.store, home, launch, emit, options);
    const c: Context = {
      home,
      store: this.store,
      scheduler: this.scheduler,
      emit,
      run: (id) => this.store.run(id) ?? notFound(`no run ${id}`),
      dataset: (id) => this.store.datasetById(id) ?? notFound(`no dataset ${id}`),
    };
    this.handlers = {
      ...datasetHandlers(c),
      ...runHandlers(c),
      ...analysisHandlers(c),
      ...embeddingHandlers(c),
    } satisfies Required<Handlers>;
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

  /** Pauses every running run (each checkpoints) and waits for their processes to end, e.g. on quit. */
  async shutdown(timeoutMs = 60_000): Promise<void> {
    await this.scheduler.shutdown(timeoutMs);
    this.store.close();
  }
}

function notFound(message: string): never {
  throw new ApiError('not-found', message);
}

export type ServiceResult<M extends Method> = Awaited<ReturnType<Service['handlers'][M]>>;
export type { Args };
