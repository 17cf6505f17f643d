import { rmSync } from 'node:fs';
import { dirname } from 'node:path';
import type { MetricRow, Store } from '../store/store.js';
import type { TrainEvent } from '../train/loop.js';
import { runCheckpoints } from './reconcile.js';

/**
 * Persists a run's training events: metric rows in batched transactions, checkpoint rows (after their
 * files are safely renamed into place), retention, and the run's status. Used by the CLI in-process and
 * by the service for job processes: one writer either way.
 */
export class RunRecorder {
  private pending: MetricRow[] = [];
  private flushed = Date.now();

  constructor(
    private readonly store: Store,
    readonly runId: number,
    private readonly keep = 3,
  ) {}

  handle(e: TrainEvent): void {
    if (e.type === 'start') this.store.updateRun(this.runId, { backend: e.backend });
    else if (e.type === 'step') {
      this.pending.push({
        step: e.step,
        epoch: e.epoch,
        samples: e.samples,
        loss: e.loss,
        losses: e.losses,
        lr: e.lr,
        imagesPerS: e.imagesPerS,
      });
      // Batched, but never more than two seconds behind, so that a reloaded window sees recent steps.
      if (this.pending.length >= 20 || Date.now() - this.flushed > 2000) this.flush();
      this.store.updateRun(this.runId, { step: e.step, epoch: e.epoch });
    } else if (e.type === 'eval') {
      this.flush();
      this.store.setEval(this.runId, e.step, e.top1, e.loss);
    } else if (e.type === 'knn') {
      this.store.addKnn(this.runId, e);
    } else if (e.type === 'checkpoint') {
      this.flush();
      this.store.addCheckpoint({ runId: this.runId, step: e.step, epoch: e.epoch, loss: e.loss, path: e.path, size: e.size, hash: e.hash });
      this.prune(dirname(e.path));
    } else if (e.type === 'skipped') {
      this.store.addSkipped(this.runId);
    } else if (e.type === 'end') {
      this.flush();
      this.store.updateRun(this.runId, { status: e.status, pid: null, step: e.step });
    }
  }

  flush(): void {
    this.flushed = Date.now();
    if (this.pending.length) this.store.addMetrics(this.runId, this.pending.splice(0));
  }

  /**
   * Keeps the last `keep` checkpoints and the one with the lowest loss, those in the folder the store never recorded
   * included; deletes the rest, file and row. A row whose file is gone is dropped.
   */
  private prune(runDir: string): void {
    const all = runCheckpoints(this.store, this.runId, runDir);
    for (const c of all) if (c.file === 'missing') this.store.deleteCheckpoint(c.id!);
    const kept = all.filter((c) => c.file !== 'missing');
    const best = kept.filter((c) => c.loss !== null).sort((a, b) => a.loss! - b.loss!)[0];
    for (const c of kept.slice(0, Math.max(0, kept.length - this.keep))) {
      if (c === best) continue;
      if (c.id !== undefined) this.store.deleteCheckpoint(c.id);
      rmSync(c.path, { force: true });
    }
  }
}
