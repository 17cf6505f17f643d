import { createHash } from 'node:crypto';
import { copyFileSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { writeAtomic } from '../atomic.js';
import { parseRunConfig, type RunConfig } from '../config.js';
import { indexFolder } from '../data/indexer.js';
import { TORCH_ENGINE, torchCannot, torchSpec } from '../engine.js';
import { UserError } from '../errors.js';
import { checkpointRef, loadRef, type CheckpointId, type CheckpointRef } from '../runs/checkpoints.js';
import { specOf } from '../runs/spec.js';
import type { ImageRow, MetricRow, Store } from '../store/store.js';
import { AdamW } from '../train/adamw.js';
import { loadCheckpoint, saveCheckpoint } from '../train/checkpoint.js';
import { pretrainModel } from '../train/pretrain.js';
import { jobReadme } from './readme.js';

/** The PyTorch trainer shipped with the app (the torch engine's entry point), copied into every job folder. */
export const TRAIN_PY = join(TORCH_ENGINE, 'train.py');

/** What `job.json` records: where the images were, the run a job continues (and the step), the run it came back as. */
export interface JobInfo {
  dataRoot: string;
  source: { runId: number; step: number } | null;
  runId?: number;
}

export interface ScaleOut {
  /** A run to continue from its latest checkpoint (or `RUN:STEP`), or a new run's config. */
  from: { run: CheckpointId } | { config: unknown };
  data: string;
  out: string;
}

/** A scale-out job folder, checked against the database: what {@link writeScaleOut} writes. */
export interface ScalePlan {
  out: string;
  config: RunConfig;
  /** The checkpoint a continued run starts from; null for a new run. */
  source: CheckpointRef | null;
  dataRoot: string;
  rows: ImageRow[];
}

/**
 * Writes a self-contained job folder for PyTorch DDP: the torch engine (train.py and its package), spec.json (the model
 * and schedule, resolved), config.json, manifest.jsonl (the dataset's images in
 * the app's order), init.safetensors (a new run's seeded initial weights, or a continued run's checkpoint with its
 * optimizer state), job.json and README.md with the launch commands. Everything is checked before anything is written.
 */
export async function scaleOut(store: Store, o: ScaleOut): Promise<{ out: string; config: RunConfig; images: number; readme: string }> {
  emptyOut(o.out);
  const source = 'run' in o.from ? checkpointRef(store, o.from.run) : null;
  const config = 'run' in o.from ? undefined : parseRunConfig(o.from.config);
  const summary = await indexFolder(store, o.data).catch((err: Error) => {
    throw new UserError(`--data: ${err.message}`);
  });
  return writeScaleOut(planScaleOut({ config, source, dataRoot: summary.root, rows: store.images(summary.datasetId, 'ok'), out: o.out }));
}

/** Checks a scale-out without reading a checkpoint or writing a file: the database half of {@link scaleOut}. */
export function planScaleOut(o: {
  config?: RunConfig;
  source: CheckpointRef | null;
  dataRoot: string;
  rows: ImageRow[];
  out: string;
}): ScalePlan {
  const out = emptyOut(o.out);
  let config = o.config;
  if (o.source) {
    const spec = specOf(o.source.run);
    if (spec.kind !== 'pretrain') throw new UserError(`run ${o.source.run.id} is not a pretraining run: only pretraining scales out`);
    config = spec.config;
  }
  if (!config) throw new Error('scale-out: neither a run nor a config');
  supported(config);
  const need = config.optim.batch * config.optim.accumIter;
  if (o.rows.length < need) throw new UserError(`--data: ${o.dataRoot} has ${o.rows.length} usable images, fewer than one step of ${need}`);
  return { out, config, source: o.source, dataRoot: o.dataRoot, rows: o.rows };
}

/** Writes the planned folder (the compute half of {@link scaleOut}: a job process runs it for the service). */
export async function writeScaleOut(plan: ScalePlan): Promise<{ out: string; config: RunConfig; images: number; readme: string }> {
  const { out, config, rows, dataRoot } = plan;
  const found = plan.source && loadRef(plan.source);
  mkdirSync(out, { recursive: true });
  cpSync(TORCH_ENGINE, out, { recursive: true, filter: (src) => !src.includes('__pycache__') });
  writeAtomic(join(out, 'spec.json'), JSON.stringify(torchSpec(config), null, 2) + '\n');
  writeAtomic(join(out, 'config.json'), JSON.stringify(config, null, 2) + '\n');
  writeAtomic(
    join(out, 'manifest.jsonl'),
    rows.map((r) => JSON.stringify({ path: r.path, sha256: r.hash, label: r.label })).join('\n') + '\n',
  );
  const info: JobInfo = { dataRoot, source: found && { runId: found.run.id, step: found.step } };
  writeAtomic(join(out, 'job.json'), JSON.stringify(info, null, 2) + '\n');
  if (found) copyFileSync(found.path, join(out, 'init.safetensors'));
  else await writeInitial(config, join(out, 'init.safetensors'));
  const readme = jobReadme({ config, images: rows.length, dataRoot, source: info.source });
  writeAtomic(join(out, 'README.md'), readme);
  return { out, config, images: rows.length, readme };
}

/** The absolute `--out`, which must be new or empty. */
function emptyOut(path: string): string {
  const out = resolve(path);
  if (existsSync(out) && readdirSync(out).length) throw new UserError(`--out: ${out} exists and is not empty`);
  return out;
}

/** Scale-out runs the torch engine: what it cannot train is refused before a file is written. */
function supported(config: RunConfig): void {
  const cannot = torchCannot({ kind: 'pretrain', model: config.model }, 'scale-out');
  if (cannot) throw new UserError(`${cannot.path}: ${cannot.message}`);
}

/** A new run's step-0 checkpoint: the weights the app would start from with this seed (over them `init`, a
 * backbone's), zero moments. */
export async function writeInitial(config: RunConfig, path: string, init?: ReadonlyMap<string, Float32Array>): Promise<void> {
  const model = pretrainModel(config.model, config.seed);
  if (init) model.params.assign(init);
  const optimizer = new AdamW(model.params.vars, config.optim);
  try {
    await saveCheckpoint(path, model, optimizer, { step: 0, epoch: 0, loss: null, config });
  } finally {
    optimizer.dispose();
    model.dispose();
  }
}

const finite = (v: unknown) => typeof v === 'number' && Number.isFinite(v);

/** metrics.jsonl: one `step` event a line, as the app's training loop reports them. */
function readMetrics(file: string): MetricRow[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => line.trim())
    .map((line, i) => {
      const e = JSON.parse(line) as Record<string, unknown>;
      const ok =
        e.type === 'step' &&
        ['step', 'epoch', 'samples', 'loss', 'lr', 'imagesPerS'].every((k) => finite(e[k])) &&
        Array.isArray(e.losses) &&
        e.losses.every(finite);
      if (!ok) throw new UserError(`${file}:${i + 1}: not a step event`);
      return e as unknown as MetricRow;
    });
}

/**
 * Brings a job back as a run: its metrics and checkpoints (copied under the app's data folder) join the run it
 * continued, or the run an earlier scale-in created, or a new pretraining run on the job's dataset.
 */
export async function scaleIn(
  store: Store,
  jobDir: string,
  checkpointPath: (runId: number, step: number) => string,
): Promise<{ runId: number; step: number; created: boolean; checkpoints: number; metrics: number }> {
  const dir = resolve(jobDir);
  const read = (name: string) => {
    try {
      return JSON.parse(readFileSync(join(dir, name), 'utf8')) as unknown;
    } catch (err) {
      throw new UserError(`${join(dir, name)}: cannot read (${(err as Error).message.split('\n')[0]})`);
    }
  };
  const info = read('job.json') as JobInfo;
  const config = parseRunConfig(read('config.json'));
  const files = existsSync(join(dir, 'checkpoints'))
    ? readdirSync(join(dir, 'checkpoints'))
        .filter((f) => /^ckpt-\d+\.safetensors$/.test(f))
        .sort()
    : [];
  if (!files.length) throw new UserError(`${dir}: the job has no checkpoint yet (checkpoints/ is empty)`);
  const checkpoints = files.map((f) => {
    const path = join(dir, 'checkpoints', f);
    const c = loadCheckpoint(path);
    if (JSON.stringify(parseRunConfig(c.state.config)) !== JSON.stringify(config))
      throw new UserError(`${path}: its config differs from the job's config.json`);
    return { path, c };
  });
  const metrics = readMetrics(join(dir, 'metrics.jsonl'));

  const existing = info.runId ?? info.source?.runId;
  let runId: number;
  if (existing !== undefined) {
    const run = store.run(existing);
    if (!run) throw new UserError(`${dir}: continues run ${existing}, which this data folder does not have`, 'not-found');
    if (run.status === 'running' || run.status === 'queued')
      throw new UserError(`run ${run.id} is ${run.status} here: pause it before bringing the job back into it`, 'conflict');
    runId = run.id;
  } else {
    const dataset = store.dataset(info.dataRoot);
    runId = store.createRun({
      name: `${basename(dir)} (torch)`,
      datasetId: dataset?.id ?? null,
      config,
      backend: 'torch',
      status: 'paused',
      pid: null,
    }).id;
    writeAtomic(join(dir, 'job.json'), JSON.stringify({ ...info, runId }, null, 2) + '\n');
  }
  store.addMetrics(runId, metrics);
  for (const { path, c } of checkpoints) {
    const target = checkpointPath(runId, c.state.step);
    mkdirSync(join(target, '..'), { recursive: true });
    copyFileSync(path, target);
    const hash = createHash('sha256').update(readFileSync(target)).digest('hex');
    store.addCheckpoint({
      runId,
      step: c.state.step,
      epoch: c.state.epoch,
      loss: c.state.loss,
      path: target,
      size: statSync(target).size,
      hash,
    });
  }
  const last = checkpoints.at(-1)!.c.state;
  const stepsPerEpoch = last.epoch > 0 ? last.step / last.epoch : Infinity;
  const done = last.step >= config.optim.epochs * stepsPerEpoch - 1e-9;
  store.updateRun(runId, { step: last.step, epoch: last.epoch, status: done ? 'finished' : 'paused', pid: null });
  return { runId, step: last.step, created: existing === undefined, checkpoints: checkpoints.length, metrics: metrics.length };
}
