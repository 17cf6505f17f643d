import { rmSync } from 'node:fs';
import { bestOf, type MetricRow, type Store } from '../store/store.js';
import type { TrainEvent } from '../train/loop.js';

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
    } else if (e.type === 'probe') {
      const { top1, baselines, lambda, holdoutTop1, features, dims, seconds } = e;
      this.store.setProbeResult(this.runId, { top1, baselines, lambda, holdoutTop1, features, dims, seconds });
    } else if (e.type === 'checkpoint') {
      this.flush();
      const { step, epoch, loss, path, size, hash, top1 } = e;
      this.store.addCheckpoint({ runId: this.runId, step, epoch, loss, path, size, hash, valTop1: top1 ?? null });
      this.prune();
    } else if (e.type === 'skipped') {
      this.store.addSkipped(this.runId);
    } else if (e.type === 'finetune') {
      this.store.updateRun(this.runId, { finetuneResult: { top1: e.top1, probeTop1: e.probeTop1, baselines: e.baselines } });
    } else if (e.type === 'end') {
      this.flush();
      this.store.updateRun(this.runId, { status: e.status, pid: null, step: e.step });
    }
  }

  flush(): void {
    this.flushed = Date.now();
    if (this.pending.length) this.store.addMetrics(this.runId, this.pending.splice(0));
  }

  /** Keeps the last `keep` checkpoints, the one with the lowest loss and the best validated one; deletes the rest, file and row. */
  private prune(): void {
    const all = this.store.checkpoints(this.runId);
    const best = all.filter((c) => c.loss !== null).sort((a, b) => a.loss! - b.loss!)[0];
    const validated = bestOf(all);
    for (const c of all.slice(0, Math.max(0, all.length - this.keep))) {
      if (c.id === best?.id || c.id === validated?.id) continue;
      this.store.deleteCheckpoint(c.id);
      rmSync(c.path, { force: true });
    }
  }
}
