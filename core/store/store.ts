import { existsSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { openDatabase, type DB } from './db.js';

export type RunStatus = 'queued' | 'running' | 'paused' | 'finished' | 'failed' | 'interrupted';

export interface ImageRow {
  path: string;
  size: number;
  mtimeMs: number;
  status: 'ok' | 'rejected';
  format: string | null;
  width: number | null;
  height: number | null;
  hash: string | null;
  label: string | null;
  reason: string | null;
}

/** Each image's short side, where it was read. */
export const shortSides = (images: ImageRow[]) => images.flatMap((i) => (i.width && i.height ? [Math.min(i.width, i.height)] : []));

export interface DatasetRow {
  id: number;
  root: string;
  name: string;
  createdAt: string;
  indexedAt: string | null;
}

export type RunKind = 'pretrain' | 'finetune' | 'import';

export interface RunRow {
  id: number;
  kind: RunKind;
  parentId: number | null;
  name: string;
  datasetId: number | null;
  config: unknown;
  backend: string;
  status: RunStatus;
  pid: number | null;
  error: string | null;
  notes: string;
  tags: string[];
  step: number;
  epoch: number;
  /** Images skipped in training because they could not be read. */
  skippedImages: number;
  createdAt: string;
  updatedAt: string;
  finishedAt: string | null;
  /** The kNN monitor's probe set: a labeled dataset, and the cadence (absent: within the time budget). */
  probe: RunProbe | null;
  /** A logistic linear probe's result on its validation images, with its baselines. */
  probeResult: ProbeResult | null;
  /** A finished fine-tune: its top-1 beside its baselines on the same split. */
  finetuneResult: FinetuneResult | null;
}

export interface FinetuneResult {
  /** Validation top-1 of the checkpoint export picks (the best). */
  top1: number;
  /** The linear probe it started from (LP-FT); null without one. */
  probeTop1: number | null;
  /** The same evaluation of the raw pixels (a logistic probe) and of the same recipe from the initialisation; null when not asked for. */
  baselines: { pixels: number; init: number } | null;
}

/** A logistic probe's top-1 (fractions) beside raw pixels' and the untrained backbone's on the same split. */
export interface ProbeResult {
  top1: number;
  baselines: { pixels: number; init: number };
  lambda: number;
  holdoutTop1: number;
  features: 'last' | 'last4';
  dims: number;
  seconds: number;
}

export interface RunProbe {
  datasetId: number;
  every?: number;
}

/** A kNN evaluation of a run's backbone on its probe set (fractions), and the seconds it took. */
export interface KnnRow {
  step: number;
  top1: number;
  top5: number;
  seconds: number;
  /** The logistic probe's top-1 on the same embeddings (fitted on the reference half); null before it existed. */
  probeTop1?: number | null;
}

export interface MetricRow {
  step: number;
  epoch: number;
  samples: number;
  loss: number;
  losses: number[];
  lr: number;
  imagesPerS: number;
  /** Fine-tuning: top-1 and loss on the validation split, at the steps that end an epoch. */
  valTop1?: number | null;
  valLoss?: number | null;
}

export interface CheckpointRow {
  id: number;
  runId: number;
  step: number;
  epoch: number;
  loss: number | null;
  path: string;
  size: number;
  hash: string;
  /** Validation top-1 of its weights, where evaluated (fine-tuning). */
  valTop1: number | null;
  createdAt: string;
}

/** One resume (or extension) of a run: where it continued from, what it changed, what it set aside. */
export interface ResumeRow {
  id: number;
  fromStep: number;
  /** Settings changed, by field: [before, after] (null: unset). */
  changes: Record<string, [unknown, unknown]>;
  /** Steps of the checkpoints after `fromStep` moved to `folder` with the metrics past it. */
  superseded: number[];
  folder: string | null;
  time: string;
}

export interface ExportRow {
  id: number;
  format: string;
  path: string;
  createdAt: string;
}

const camel = (row: Record<string, unknown>) =>
  Object.fromEntries(Object.entries(row).map(([k, v]) => [k.replace(/_(\w)/g, (_, c: string) => c.toUpperCase()), v]));

const METRIC_COLUMNS = 'step, epoch, samples, loss, losses, lr, images_per_s, val_top1, val_loss';
const metricRow = (r: Record<string, unknown>): MetricRow => ({
  ...(camel(r) as unknown as MetricRow),
  losses: JSON.parse(r.losses as string) as number[],
});

/** The run store: the one writer of the app's SQLite database. */
export class Store {
  readonly db: DB;
  /** The run folders beside the database (core/home.ts): a new run's number is never one of theirs. */
  private readonly runsDir: string;

  constructor(path: string, o: { busyTimeoutMs?: number } = {}) {
    this.db = openDatabase(path, undefined, o.busyTimeoutMs);
    this.runsDir = join(dirname(path), 'runs');
  }

  close(): void {
    this.db.close();
  }

  // ── datasets and images ────────────────────────────────────────────────────────────────────────

  dataset(root: string): DatasetRow | undefined {
    const row = this.db.prepare('SELECT * FROM datasets WHERE root = ?').get(root) as Record<string, unknown> | undefined;
    return row && (camel(row) as unknown as DatasetRow);
  }

  datasetById(id: number): DatasetRow | undefined {
    const row = this.db.prepare('SELECT * FROM datasets WHERE id = ?').get(id) as Record<string, unknown> | undefined;
    return row && (camel(row) as unknown as DatasetRow);
  }

  /** Every dataset with its counts of usable and rejected images. */
  datasetSummaries(): (DatasetRow & { images: number; rejected: number })[] {
    const rows = this.db
      .prepare(
        `SELECT d.*, COUNT(i.id) FILTER (WHERE i.status = 'ok') AS images, COUNT(i.id) FILTER (WHERE i.status = 'rejected') AS rejected
         FROM datasets d LEFT JOIN images i ON i.dataset_id = d.id GROUP BY d.id ORDER BY d.id`,
      )
      .all() as Record<string, unknown>[];
    return rows.map((r) => camel(r) as unknown as DatasetRow & { images: number; rejected: number });
  }

  ensureDataset(root: string, name: string): DatasetRow {
    this.db.prepare('INSERT INTO datasets (root, name) VALUES (?, ?) ON CONFLICT (root) DO NOTHING').run(root, name);
    return this.dataset(root)!;
  }

  images(datasetId: number, status?: 'ok' | 'rejected'): ImageRow[] {
    const sql = `SELECT path, size, mtime_ms, status, format, width, height, hash, label, reason FROM images
                 WHERE dataset_id = ? ${status ? 'AND status = ?' : ''} ORDER BY path`;
    const rows = this.db.prepare(sql).all(...(status ? [datasetId, status] : [datasetId])) as Record<string, unknown>[];
    return rows.map((r) => camel(r) as unknown as ImageRow);
  }

  /** Applies one indexing pass atomically: upserted rows, removed paths, and the index time. */
  applyIndex(datasetId: number, upserts: ImageRow[], removed: string[]): void {
    const upsert = this.db.prepare(`
      INSERT INTO images (dataset_id, path, size, mtime_ms, status, format, width, height, hash, label, reason)
      VALUES (@datasetId, @path, @size, @mtimeMs, @status, @format, @width, @height, @hash, @label, @reason)
      ON CONFLICT (dataset_id, path) DO UPDATE SET size = excluded.size, mtime_ms = excluded.mtime_ms, status = excluded.status,
        format = excluded.format, width = excluded.width, height = excluded.height, hash = excluded.hash,
        label = excluded.label, reason = excluded.reason`);
    const remove = this.db.prepare('DELETE FROM images WHERE dataset_id = ? AND path = ?');
    this.db.transaction(() => {
      for (const row of upserts) upsert.run({ datasetId, ...row });
      for (const path of removed) remove.run(datasetId, path);
      this.db.prepare(`UPDATE datasets SET indexed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?`).run(datasetId);
    })();
  }

  // ── runs ───────────────────────────────────────────────────────────────────────────────────────

  /** A new run: numbered `id` (a recovered one), else after every run and every run folder, so that none is overwritten. */
  createRun(r: {
    id?: number;
    name: string;
    datasetId: number | null;
    config: unknown;
    backend: string;
    kind?: RunKind;
    parentId?: number | null;
    status?: RunStatus;
    pid?: number | null;
    probe?: RunProbe | null;
  }): RunRow {
    const info = this.db
      .prepare(
        `INSERT INTO runs (id, name, dataset_id, config, backend, status, pid, kind, parent_id, probe) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(
        r.id ?? this.nextRunId(),
        r.name,
        r.datasetId,
        JSON.stringify(r.config),
        r.backend,
        r.status ?? 'running',
        r.pid === undefined ? process.pid : r.pid,
        r.kind ?? 'pretrain',
        r.parentId ?? null,
        r.probe ? JSON.stringify(r.probe) : null,
      );
    return this.run(Number(info.lastInsertRowid))!;
  }

  private nextRunId(): number {
    const last = (this.db.prepare('SELECT MAX(id) AS id FROM runs').get() as { id: number | null }).id ?? 0;
    const folders = existsSync(this.runsDir)
      ? readdirSync(this.runsDir)
          .filter((n) => /^\d+$/.test(n))
          .map(Number)
      : [];
    return Math.max(last, ...folders) + 1;
  }

  run(id: number): RunRow | undefined {
    const row = this.db.prepare('SELECT * FROM runs WHERE id = ?').get(id) as Record<string, unknown> | undefined;
    return row && parseRun(row);
  }

  runs(): RunRow[] {
    return (this.db.prepare('SELECT * FROM runs ORDER BY id').all() as Record<string, unknown>[]).map(parseRun);
  }

  updateRun(
    id: number,
    fields: Partial<
      Pick<
        RunRow,
        'status' | 'pid' | 'error' | 'backend' | 'step' | 'epoch' | 'name' | 'notes' | 'tags' | 'config' | 'datasetId' | 'finetuneResult'
      >
    >,
  ): void {
    const cols = Object.keys(fields);
    if (!cols.length) return;
    const values = Object.values(fields).map((v) => (v !== null && typeof v === 'object' ? JSON.stringify(v) : v));
    const finished =
      fields.status && fields.status !== 'running' && fields.status !== 'queued'
        ? `, finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')`
        : '';
    const set = cols.map((c) => `${c.replace(/[A-Z]/g, (m) => '_' + m.toLowerCase())} = ?`).join(', ');
    this.db
      .prepare(`UPDATE runs SET ${set}, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')${finished} WHERE id = ?`)
      .run(...values, id);
  }

  /** Counts one more image the run skipped. */
  addSkipped(id: number): void {
    this.db.prepare('UPDATE runs SET skipped_images = skipped_images + 1 WHERE id = ?').run(id);
  }

  /** Runs left running or queued by a process that no longer exists were killed: mark them interrupted, saying so. */
  markInterrupted(isAlive: (pid: number) => boolean): void {
    const stale = this.runs().filter((r) => (r.status === 'running' || r.status === 'queued') && (r.pid === null || !isAlive(r.pid)));
    for (const r of stale) {
      const by = r.pid === null ? 'its process' : `its process ${r.pid}`;
      const command = `localmim ${r.kind === 'finetune' ? 'finetune' : 'pretrain'} --resume ${r.id}`;
      const error = `interrupted: ${by} stopped at ${r.updatedAt} (a crash or kill); resume with ${command} (in the app: Resume), from its last checkpoint`;
      this.updateRun(r.id, { status: 'interrupted', pid: null, error });
    }
  }

  // ── metrics and checkpoints ────────────────────────────────────────────────────────────────────

  /** Appends metric rows in one transaction; rows at an existing step replace it (a resumed run redoes steps). */
  addMetrics(runId: number, rows: MetricRow[]): void {
    const insert = this.db.prepare(`INSERT OR REPLACE INTO metrics (run_id, step, epoch, samples, loss, losses, lr, images_per_s)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?)`);
    this.db.transaction(() => {
      for (const m of rows) insert.run(runId, m.step, m.epoch, m.samples, m.loss, JSON.stringify(m.losses), m.lr, m.imagesPerS);
    })();
  }

  metrics(runId: number): MetricRow[] {
    const rows = this.db.prepare(`SELECT ${METRIC_COLUMNS} FROM metrics WHERE run_id = ? ORDER BY step`).all(runId) as Record<
      string,
      unknown
    >[];
    return rows.map(metricRow);
  }

  /** The last step with a metric row, 0 when none. */
  lastMetricStep(runId: number): number {
    return (this.db.prepare('SELECT MAX(step) AS step FROM metrics WHERE run_id = ?').get(runId) as { step: number | null }).step ?? 0;
  }

  /** Each run's newest metric row, by run id, in one query (the runs list shows no more). */
  lastMetrics(): Map<number, MetricRow> {
    const rows = this.db
      .prepare(
        `SELECT run_id, ${METRIC_COLUMNS} FROM metrics WHERE (run_id, step) IN (SELECT run_id, MAX(step) FROM metrics GROUP BY run_id)`,
      )
      .all() as Record<string, unknown>[];
    return new Map(rows.map(({ run_id, ...r }) => [run_id as number, metricRow(r)]));
  }

  /** Records a validation result on the metric row of the step that ended the epoch. */
  setEval(runId: number, step: number, top1: number, loss: number): void {
    this.db.prepare('UPDATE metrics SET val_top1 = ?, val_loss = ? WHERE run_id = ? AND step = ?').run(top1, loss, runId, step);
  }

  /** Forgets metrics after a step: a resumed run recomputes them from its checkpoint. */
  truncateMetrics(runId: number, afterStep: number): void {
    this.db.prepare('DELETE FROM metrics WHERE run_id = ? AND step > ?').run(runId, afterStep);
    this.db.prepare('DELETE FROM knn WHERE run_id = ? AND step > ?').run(runId, afterStep);
  }

  addKnn(runId: number, k: KnnRow): void {
    this.db
      .prepare('INSERT OR REPLACE INTO knn (run_id, step, top1, top5, seconds, probe_top1) VALUES (?, ?, ?, ?, ?, ?)')
      .run(runId, k.step, k.top1, k.top5, k.seconds, k.probeTop1 ?? null);
  }

  knn(runId: number): KnnRow[] {
    return this.db
      .prepare('SELECT step, top1, top5, seconds, probe_top1 AS probeTop1 FROM knn WHERE run_id = ? ORDER BY step')
      .all(runId) as KnnRow[];
  }

  setProbeResult(runId: number, result: ProbeResult): void {
    this.db.prepare('UPDATE runs SET probe_result = ? WHERE id = ?').run(JSON.stringify(result), runId);
  }

  addCheckpoint(c: Omit<CheckpointRow, 'id' | 'createdAt' | 'valTop1'> & { valTop1?: number | null }): CheckpointRow {
    this.db
      .prepare(`INSERT OR REPLACE INTO checkpoints (run_id, step, epoch, loss, path, size, hash, val_top1) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`)
      .run(c.runId, c.step, c.epoch, c.loss, c.path, c.size, c.hash, c.valTop1 ?? null);
    return this.checkpoints(c.runId).find((x) => x.step === c.step)!;
  }

  checkpoints(runId: number): CheckpointRow[] {
    const rows = this.db.prepare('SELECT * FROM checkpoints WHERE run_id = ? ORDER BY step').all(runId) as Record<string, unknown>[];
    return rows.map((r) => camel(r) as unknown as CheckpointRow);
  }

  addExport(runId: number, format: string, path: string): void {
    this.db.prepare('INSERT INTO exports (run_id, format, path) VALUES (?, ?, ?)').run(runId, format, path);
  }

  /** A run's exports, oldest first: where each folder was written. */
  exports(runId: number): ExportRow[] {
    const rows = this.db.prepare('SELECT id, format, path, created_at FROM exports WHERE run_id = ? ORDER BY id').all(runId) as Record<
      string,
      unknown
    >[];
    return rows.map((r) => camel(r) as unknown as ExportRow);
  }

  addResume(runId: number, r: Pick<ResumeRow, 'fromStep' | 'changes' | 'superseded'>): number {
    const info = this.db
      .prepare('INSERT INTO resumes (run_id, from_step, changes, superseded) VALUES (?, ?, ?, ?)')
      .run(runId, r.fromStep, JSON.stringify(r.changes), JSON.stringify(r.superseded));
    return Number(info.lastInsertRowid);
  }

  /** The checkpoints a resume set aside, and the folder they went to. */
  setSuperseded(id: number, steps: number[], folder: string): void {
    this.db.prepare('UPDATE resumes SET superseded = ?, folder = ? WHERE id = ?').run(JSON.stringify(steps), folder, id);
  }

  /** A run's resumes, oldest first. */
  resumes(runId: number): ResumeRow[] {
    const rows = this.db.prepare('SELECT * FROM resumes WHERE run_id = ? ORDER BY id').all(runId) as Record<string, unknown>[];
    return rows.map((r) => ({
      id: r.id as number,
      fromStep: r.from_step as number,
      changes: JSON.parse(r.changes as string) as ResumeRow['changes'],
      superseded: JSON.parse(r.superseded as string) as number[],
      folder: r.folder as string | null,
      time: r.time as string,
    }));
  }

  /** The checkpoint with the highest validation top-1 (the later of equals), if any was evaluated. */
  bestCheckpoint(runId: number): CheckpointRow | undefined {
    return bestOf(this.checkpoints(runId));
  }

  deleteCheckpoint(id: number): void {
    this.db.prepare('DELETE FROM checkpoints WHERE id = ?').run(id);
  }
}

/** The evaluated checkpoint with the highest validation top-1, the later of equals. */
export const bestOf = <T extends { valTop1: number | null }>(rows: T[]) =>
  rows.reduce<T | undefined>((b, c) => (c.valTop1 !== null && (!b || c.valTop1 >= b.valTop1!) ? c : b), undefined);

function parseRun(row: Record<string, unknown>): RunRow {
  const r = camel(row) as Record<string, unknown>;
  return {
    ...(r as unknown as RunRow),
    config: JSON.parse(r.config as string),
    tags: JSON.parse(r.tags as string) as string[],
    probe: r.probe ? (JSON.parse(r.probe as string) as RunProbe) : null,
    finetuneResult: r.finetuneResult ? (JSON.parse(r.finetuneResult as string) as FinetuneResult) : null,
    probeResult: r.probeResult ? (JSON.parse(r.probeResult as string) as ProbeResult) : null,
  };
}
