import { existsSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { homePaths } from '../home.js';
import { readSafetensorsMetadata } from '../safetensors.js';
import type { RunKind, Store } from '../store/store.js';
import { loadCheckpoint, type LoadedCheckpoint, type StepRecord, type TrainState } from '../train/checkpoint.js';

/**
 * A checkpoint file against the store's row: `present` as recorded, `missing` (deleted), `damaged` (not the size
 * recorded), or `unrecorded`: in the run's folder with no row, its writer's service gone before recording it.
 */
export type FileState = 'present' | 'missing' | 'damaged' | 'unrecorded';

export interface RunCheckpoint {
  step: number;
  epoch: number;
  loss: number | null;
  path: string;
  size: number;
  /** The store's row and the hash it recorded; absent for an unrecorded file. */
  id?: number;
  hash?: string;
  /** The validation top-1 recorded for it (fine-tuning); null where none was. */
  valTop1: number | null;
  file: FileState;
}

/** A checkpoint's file name in its run's folder (core/home.ts homePaths.checkpoint). */
export const CHECKPOINT_FILE = /^ckpt-(\d+)\.safetensors$/;

/**
 * A run's checkpoints as the store and its folder hold them together, oldest first: the files are the truth, the
 * store their index. Reads headers only (an unrecorded file's step, epoch and loss are its own metadata).
 */
export function runCheckpoints(store: Store, runId: number, runDir: string): RunCheckpoint[] {
  return scan(store, runId, runDir).map(({ steps: _, ...c }) => c);
}

/** {@link runCheckpoints}, with the steps each unrecorded file carries (TrainState.steps). */
function scan(store: Store, runId: number, runDir: string): (RunCheckpoint & { steps?: StepRecord[] })[] {
  const rows = store.checkpoints(runId);
  const all: (RunCheckpoint & { steps?: StepRecord[] })[] = rows.map(({ step, epoch, loss, path, size, id, hash, valTop1 }) => {
    const onDisk = statSync(path, { throwIfNoEntry: false })?.size;
    return {
      step,
      epoch,
      loss,
      path,
      size,
      id,
      hash,
      valTop1,
      file: onDisk === undefined ? 'missing' : onDisk === size ? 'present' : 'damaged',
    };
  });
  const recorded = new Set(rows.map((r) => r.step));
  const names = existsSync(runDir) ? readdirSync(runDir).filter((n) => CHECKPOINT_FILE.test(n)) : [];
  for (const name of names) {
    const path = join(runDir, name);
    const state = stateOf(path);
    if (!state || recorded.has(state.step) || state.step !== Number(CHECKPOINT_FILE.exec(name)![1])) continue;
    const { step, epoch, loss, steps } = state;
    all.push({ step, epoch, loss, path, size: statSync(path).size, valTop1: null, file: 'unrecorded', steps });
  }
  return all.sort((a, b) => a.step - b.step);
}

/**
 * What the store lacks up to `step`, from the files: the steps that the unrecorded checkpoints carry (see
 * TrainState.steps), past the last one recorded, and the row of `checkpoint` (at `step`) when it is unrecorded.
 */
export function recordFromFiles(
  store: Store,
  runId: number,
  runDir: string,
  checkpoint?: { path: string; loaded: LoadedCheckpoint },
): void {
  const upTo = checkpoint?.loaded.state.step ?? 0;
  const found = scan(store, runId, runDir).filter((c) => c.step <= upTo);
  const after = store.lastMetricStep(runId);
  const steps = found.flatMap((c) => (c.file === 'unrecorded' ? (c.steps ?? []) : []));
  store.addMetrics(
    runId,
    steps.filter((s) => s.step > after && s.step <= upTo),
  );
  if (checkpoint && found.some((c) => c.step === upTo && c.file === 'unrecorded')) {
    const { path, loaded } = checkpoint;
    const { step, epoch, loss } = loaded.state;
    store.addCheckpoint({ runId, step, epoch, loss, path, size: loaded.size, hash: loaded.hash });
  }
}

/**
 * Makes the store agree with the folder of a run no live process trains (at service start): each checkpoint file the
 * store does not know (its writer's service died, or the database refused it) is recorded with the steps it carries
 * (recordFromFiles); a damaged one is deleted. Retention waits for the run's next checkpoint, which knows its --keep.
 */
export function reconcileCheckpoints(store: Store, runId: number, runDir: string): { recorded: number[]; removed: string[] } {
  const known = new Set(store.checkpoints(runId).map((c) => c.path));
  const names = existsSync(runDir) ? readdirSync(runDir).filter((n) => CHECKPOINT_FILE.test(n) && !known.has(join(runDir, n))) : [];
  const done = { recorded: [] as number[], removed: [] as string[] };
  for (const name of names.sort()) {
    const path = join(runDir, name);
    const loaded = tryLoad(path);
    if (loaded?.state.step !== Number(CHECKPOINT_FILE.exec(name)![1])) {
      rmSync(path, { force: true });
      done.removed.push(path);
      continue;
    }
    recordFromFiles(store, runId, runDir, { path, loaded });
    done.recorded.push(loaded.state.step);
  }
  return done;
}

function stateOf(path: string): TrainState | undefined {
  const meta = readSafetensorsMetadata(path);
  if (meta?.format !== 'localmim-checkpoint' || !meta.state) return undefined;
  try {
    const state = JSON.parse(meta.state) as TrainState;
    return Number.isSafeInteger(state.step) ? state : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Run folders the store has no row for (its database lost or recreated beside them) become runs again, from their
 * checkpoints' metadata: config, kind, steps, checkpoint rows. Returns one line for each folder found.
 */
export function recoverRuns(store: Store, home: string): string[] {
  const { runs } = homePaths(home);
  if (!existsSync(runs)) return [];
  return readdirSync(runs)
    .filter((n) => /^\d+$/.test(n) && !store.run(Number(n)))
    .sort((a, b) => Number(a) - Number(b))
    .map((n) => recoverRun(store, Number(n), join(runs, n)));
}

function recoverRun(store: Store, id: number, dir: string): string {
  const loaded = runCheckpoints(store, id, dir).flatMap((c) => {
    const l = tryLoad(c.path);
    return l?.state.step === c.step ? [{ path: c.path, l }] : [];
  });
  const last = loaded.at(-1)?.l.state;
  if (!last)
    return `${dir}: a run folder the database has no record of, with no readable checkpoint: left as it is (new runs take other numbers)`;
  const kind = kindOf(last.config);
  store.db.transaction(() => {
    const fields = { datasetId: null, config: last.config, backend: 'unknown', kind, pid: null };
    store.createRun({ id, name: `run ${id} (recovered)`, status: kind === 'import' ? 'finished' : 'interrupted', ...fields });
    const error = kind === 'import' ? null : RECOVERED;
    store.updateRun(id, { step: last.step, epoch: last.epoch, error });
    for (const { path, l } of loaded) recordFromFiles(store, id, dir, { path, loaded: l });
  })();
  return `run ${id}: recovered from ${loaded.length} checkpoint(s) in ${dir}, up to step ${last.step} (the database had no record of it)`;
}

const RECOVERED = 'recovered from its checkpoints after the database lost it; its images are not known: resume with --data DIR';

/** Which run a checkpoint's config belongs to: a fine-tune's has `finetune`, a pretraining run's `optim`, an import's neither. */
function kindOf(config: unknown): RunKind {
  const c = typeof config === 'object' && config !== null ? config : {};
  return 'finetune' in c ? 'finetune' : 'optim' in c ? 'pretrain' : 'import';
}

export function tryLoad(path: string): LoadedCheckpoint | undefined {
  try {
    return loadCheckpoint(path);
  } catch {
    return undefined;
  }
}
