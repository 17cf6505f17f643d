import { existsSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { UserError } from '../errors.js';
import { bestOf, type CheckpointRow, type RunRow, type Store } from '../store/store.js';
import type { LoadedCheckpoint } from '../train/checkpoint.js';
import { CHECKPOINT_FILE, runCheckpoints, tryLoad, type RunCheckpoint } from './reconcile.js';

export interface ResumePoint {
  /** The newest intact checkpoint, recorded or not (see resumePoint); undefined: there is none. */
  checkpoint?: LoadedCheckpoint;
  path?: string;
  /** Checkpoints newer than `checkpoint` that are missing, unreadable or not what was recorded. */
  broken: string[];
  /** With a step asked for: the checkpoints after it, recorded or left in the folder, intact or not. */
  later: { path: string; step: number }[];
}

/**
 * Where a run would continue from: its newest intact checkpoint, recorded or left unrecorded in its folder (the last
 * one a job writes when its service dies is one: it carries the steps the store missed, see TrainState.steps), or the
 * one at `step` (an error names it when it is missing or damaged, or lists the steps there are).
 */
export function resumePoint(store: Store, runId: number, runDir: string, step?: number): ResumePoint {
  const all = runCheckpoints(store, runId, runDir);
  if (step !== undefined) return pointAt(runId, all, step);
  const broken: string[] = [];
  for (const c of [...all].reverse()) {
    const checkpoint = intact(c);
    if (checkpoint) return { checkpoint, path: c.path, broken, later: [] };
    broken.push(c.path);
  }
  return { broken, later: [] };
}

/** The checkpoint at `step`, asked for by name: it must be there and intact, recorded or not. */
function pointAt(runId: number, all: RunCheckpoint[], step: number): ResumePoint {
  const c = all.find((x) => x.step === step);
  const steps = [...new Set(all.map((x) => x.step))].join(', ') || 'none';
  if (!c) throw new UserError(`run ${runId} has no checkpoint at step ${step} (it has: ${steps})`, 'not-found');
  const checkpoint = intact(c);
  if (!checkpoint)
    throw new UserError(`run ${runId}: the checkpoint at step ${step} (${c.path}) is missing or damaged; nothing was changed`, 'conflict');
  const later = all.filter((x) => x.step > step).map(({ path, step }) => ({ path, step }));
  return { checkpoint, path: c.path, broken: [], later };
}

/** The checkpoint's file if it reads, is what was recorded, and holds the step its name says. */
function intact(c: RunCheckpoint): LoadedCheckpoint | undefined {
  const checkpoint = c.file === 'missing' ? undefined : tryLoad(c.path);
  if (!checkpoint || (c.hash !== undefined && checkpoint.hash !== c.hash) || checkpoint.state.step !== c.step) return undefined;
  return checkpoint;
}

export interface FoundCheckpoint {
  run: RunRow;
  checkpoint: LoadedCheckpoint;
  path: string;
  step: number;
}

/** A checkpoint asked for: a run's, at `step` or (none given) its best or newest. */
export interface CheckpointId {
  runId: number;
  step?: number;
}

/** The CLI's `RUN` or `RUN:STEP`, read once where it comes in. */
export function parseCheckpointId(spec: string): CheckpointId {
  const m = /^(\d+)(?::(\d+))?$/.exec(spec.trim());
  if (!m) throw new UserError(`"${spec}": expected RUN or RUN:STEP, e.g. 3 or 3:1200`);
  return { runId: Number(m[1]), ...(m[2] !== undefined && { step: Number(m[2]) }) };
}

/** A checkpoint id as the CLI writes it, for messages. */
export const checkpointName = ({ runId, step }: CheckpointId): string => (step === undefined ? `${runId}` : `${runId}:${step}`);

/** What a {@link CheckpointId} names, from the database alone: the run and its recorded checkpoints to try, newest first. */
export interface CheckpointRef {
  run: RunRow;
  candidates: CheckpointRow[];
  /** Set when one step was asked for. */
  step?: number;
}

/**
 * A run's best validated checkpoint (a fine-tune's, see Store.bestCheckpoint) or else its newest intact one, or the
 * one at `step`; errors name what is missing.
 */
export function checkpointFor(store: Store, id: CheckpointId): FoundCheckpoint {
  return loadRef(checkpointRef(store, id));
}

/** The database half of {@link checkpointFor}: fails fast on a missing run or step, reads no checkpoint file. */
export function checkpointRef(store: Store, { runId, step }: CheckpointId): CheckpointRef {
  const run = store.run(runId);
  if (!run) throw new UserError(`no run ${runId}`, 'not-found');
  const all = store.checkpoints(run.id);
  if (step === undefined) {
    if (!all.length) throw noIntact(run.id);
    const best = bestOf(all);
    return { run, candidates: [...(best ? [best] : []), ...all.reverse().filter((c) => c !== best)] };
  }
  const row = all.find((c) => c.step === step);
  if (!row)
    throw new UserError(
      `run ${run.id} has no checkpoint at step ${step} (it has: ${all.map((c) => c.step).join(', ') || 'none'})`,
      'not-found',
    );
  return { run, candidates: [row], step: row.step };
}

/** The file half of {@link checkpointFor}: the first candidate whose file is intact (hash as recorded). */
export function loadRef({ run, candidates, step }: CheckpointRef): FoundCheckpoint {
  for (const c of candidates) {
    const checkpoint = tryLoad(c.path);
    if (checkpoint?.hash === c.hash) return { run, checkpoint, path: c.path, step: step ?? checkpoint.state.step };
  }
  const newer = step === undefined && candidates[0] && newerInFolder(candidates[0]);
  if (newer) return { run, ...newer, step: newer.checkpoint.state.step };
  if (step === undefined) throw noIntact(run.id);
  throw new UserError(`run ${run.id}: the checkpoint at step ${step} (${candidates[0]!.path}) is missing or damaged`, 'not-found');
}

/**
 * A running run's retention may delete every candidate between the look-up and the read (a job reads no store):
 * the newest intact file its folder holds past them stands in.
 */
function newerInFolder(after: CheckpointRow): { checkpoint: LoadedCheckpoint; path: string } | undefined {
  const dir = dirname(after.path);
  const names = existsSync(dir) ? readdirSync(dir) : [];
  const steps = names.flatMap((n) => (CHECKPOINT_FILE.exec(n) ? [{ path: join(dir, n), step: Number(CHECKPOINT_FILE.exec(n)![1]) }] : []));
  for (const f of steps.filter((f) => f.step > after.step).sort((a, b) => b.step - a.step)) {
    const checkpoint = tryLoad(f.path);
    if (checkpoint?.state.step === f.step) return { checkpoint, path: f.path };
  }
  return undefined;
}

const noIntact = (runId: number) => new UserError(`run ${runId} has no intact checkpoint yet`, 'not-found');
