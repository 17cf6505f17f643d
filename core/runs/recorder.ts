import { rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { bestOf, type MetricRow, type Store } from '../store/store.js';
import type { TrainEvent } from '../train/loop.js';
import { runCheckpoints } from './reconcile.js';

/** What a recorder persists: the loop's events, and changes to the run's row from whoever runs the job. */
export type RunEvent = TrainEvent | { type: 'update'; fields: Parameters<Store['updateRun']>[1] };

/** The database refused a write (full disk, locked by another program, I/O error); the events stay queued. */
export class RecordError extends Error {
  override name = 'RecordError';
}

/**
 * Persists a run's training events: metric rows in batched transactions, checkpoint rows (after their
 * files are safely renamed into place), retention, and the run's status. Used by the CLI in-process and
 * by the service for job processes: one writer either way. Events are recorded in one transaction per batch:
 * when the database refuses it, nothing of it is recorded and the batch waits for the next {@link flush}.
 */
export class RunRecorder {
  private queue: RunEvent[] = [];
  private flushed = Date.now();
  /** Set while the database refuses writes: events queue up until a flush succeeds. */
  private failing = false;

  constructor(
    private readonly store: Store,
    readonly runId: number,
    private readonly keep = 3,
  ) {}

  /** Queues the event and records the queue when due; throws a RecordError if that write fails. */
  handle(e: RunEvent): void {
    this.queue.push(e);
    // Steps are batched, but never more than two seconds behind, so that a reloaded window sees recent steps.
    const due = e.type !== 'step' || this.queue.length >= 20 || Date.now() - this.flushed > 2000;
    if (due && !this.failing) this.flush();
  }

  /** Events not recorded yet. */
  get pending(): number {
    return this.queue.length;
  }

  /** Records every queued event in one transaction; on failure none is, they stay queued, and it throws a RecordError. */
  flush(): void {
    this.flushed = Date.now();
    if (!this.queue.length) return;
    let pruned: string[];
    try {
      pruned = this.store.db.transaction(() => this.apply(this.queue))();
    } catch (err) {
      this.failing = true;
      throw new RecordError(`${this.store.db.name}: cannot record run ${this.runId} (${(err as Error).message})`);
    }
    this.failing = false;
    this.queue = [];
    // Deleted once their rows' deletion is committed: no row ever names a missing file.
    for (const path of pruned) rmSync(path, { force: true });
  }

  /** Writes the events; returns the checkpoint files retention dropped. */
  private apply(events: RunEvent[]): string[] {
    const rows: MetricRow[] = [];
    const pruned: string[] = [];
    const metrics = () => {
      if (!rows.length) return;
      const last = rows.at(-1)!;
      this.store.addMetrics(this.runId, rows.splice(0));
      this.store.updateRun(this.runId, { step: last.step, epoch: last.epoch });
    };
    for (const e of events) {
      if (e.type === 'step') {
        const { step, epoch, samples, loss, losses, lr, imagesPerS } = e;
        rows.push({ step, epoch, samples, loss, losses, lr, imagesPerS });
        continue;
      }
      metrics();
      if (e.type === 'update') this.store.updateRun(this.runId, e.fields);
      else if (e.type === 'start') this.store.updateRun(this.runId, { backend: e.backend });
      else if (e.type === 'eval') this.store.setEval(this.runId, e.step, e.top1, e.loss);
      else if (e.type === 'knn') this.store.addKnn(this.runId, e);
      else if (e.type === 'probe') {
        const { top1, baselines, lambda, holdoutTop1, features, dims, seconds } = e;
        this.store.setProbeResult(this.runId, { top1, baselines, lambda, holdoutTop1, features, dims, seconds });
      } else if (e.type === 'checkpoint') {
        const { step, epoch, loss, path, size, hash, top1 } = e;
        this.store.addCheckpoint({ runId: this.runId, step, epoch, loss, path, size, hash, valTop1: top1 ?? null });
        pruned.push(...this.prune(dirname(path)));
      } else if (e.type === 'skipped') this.store.addSkipped(this.runId);
      else if (e.type === 'finetune')
        this.store.updateRun(this.runId, { finetuneResult: { top1: e.top1, probeTop1: e.probeTop1, baselines: e.baselines } });
      else if (e.type === 'end')
        this.store.updateRun(this.runId, { status: e.status, pid: null, step: e.step, ...(e.reason && { error: e.reason }) });
    }
    metrics();
    return pruned;
  }

  /**
   * Keeps the last `keep` checkpoints, the one with the lowest loss and the best validated one, those in the folder the
   * store never recorded included; drops the rest's rows and returns their files. A row whose file is gone is dropped.
   */
  private prune(runDir: string): string[] {
    const all = runCheckpoints(this.store, this.runId, runDir);
    for (const c of all) if (c.file === 'missing') this.store.deleteCheckpoint(c.id!);
    const kept = all.filter((c) => c.file !== 'missing');
    const lowest = kept.filter((c) => c.loss !== null).sort((a, b) => a.loss! - b.loss!)[0];
    const validated = bestOf(this.store.checkpoints(this.runId))?.id;
    const dropped = kept
      .slice(0, Math.max(0, kept.length - this.keep))
      .filter((c) => c !== lowest && (c.id === undefined || c.id !== validated));
    for (const c of dropped) if (c.id !== undefined) this.store.deleteCheckpoint(c.id);
    return dropped.map((c) => c.path);
  }
}
