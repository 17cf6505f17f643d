import { existsSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { UserError } from '../errors.js';
import { bestOf, type CheckpointRow, type RunRow, type Store } from '../store/store.js';
import { loadCheckpoint, type LoadedCheckpoint } from '../train/checkpoint.js';
import { RunRecorder } from './recorder.js';

export interface ResumePoint {
  /** The newest intact checkpoint, recorded or not (see resumePoint); undefined: there is none. */
  checkpoint?: LoadedCheckpoint;
  path?: string;
  /** Files that exist but are not in the store: written by a job whose service went away before recording them. */
  unrecorded: Omit<CheckpointRow, 'id' | 'createdAt' | 'valTop1'>[];
  /** Checkpoints newer than `checkpoint` that are missing, unreadable or not what was recorded. */
  broken: string[];
  /** With a step asked for: the checkpoints after it, recorded or left in the folder, intact or not. */
  later: { path: string; step: number }[];
}

const FILE = /^ckpt-(\d+)\.safetensors$/;

/**
 * Where a run would continue from: its newest intact checkpoint among those recorded and those left in its folder,
 * or the one at `step` (an error names it when it is missing or damaged, or lists the steps there are).
 */
export function resumePoint(store: Store, runId: number, runDir: string, step?: number): ResumePoint {
  const rows = store.checkpoints(runId);
  const recorded = new Set(rows.map((c) => c.path));
  const files = existsSync(runDir) ? readdirSync(runDir).filter((n) => FILE.test(n) && !recorded.has(join(runDir, n))) : [];
  const candidates = [
    ...rows.map((c) => ({ path: c.path, step: c.step, hash: c.hash as string | undefined })),
    ...files.map((n) => ({ path: join(runDir, n), step: Number(FILE.exec(n)![1]), hash: undefined })),
  ].sort((a, b) => b.step - a.step);
  if (step !== undefined) return pointAt(runId, candidates, step);
  const point: ResumePoint = { unrecorded: [], broken: [], later: [] };
  // A file renamed into place whose steps never reached the store (killed in between) would leave a gap in the
  // history: a recorded checkpoint is preferred then. With none recorded, the file is all the work there is.
  const recordedUpTo = store.lastMetricStep(runId);
  for (const c of candidates) {
    if (c.hash === undefined && beyondHistory(c.step, rows, recordedUpTo)) continue;
    const checkpoint = intact(c);
    if (!checkpoint) {
      point.broken.push(c.path);
      continue;
    }
    if (c.hash === undefined) point.unrecorded.push(rowOf(runId, c.path, checkpoint));
    return { ...point, checkpoint, path: c.path };
  }
  return point;
}

interface Candidate {
  path: string;
  step: number;
  /** As recorded; undefined for a file the store does not know. */
  hash?: string;
}

/** The checkpoint at `step`, asked for by name: it must be there and intact, recorded or not. */
function pointAt(runId: number, candidates: Candidate[], step: number): ResumePoint {
  const c = candidates.find((x) => x.step === step);
  const steps = [...new Set(candidates.map((x) => x.step))].reverse().join(', ') || 'none';
  if (!c) throw new UserError(`run ${runId} has no checkpoint at step ${step} (it has: ${steps})`, 'not-found');
  const checkpoint = intact(c);
  if (!checkpoint)
    throw new UserError(`run ${runId}: the checkpoint at step ${step} (${c.path}) is missing or damaged; nothing was changed`, 'conflict');
  const later = candidates.filter((x) => x.step > step).map(({ path, step }) => ({ path, step }));
  const unrecorded = c.hash === undefined ? [rowOf(runId, c.path, checkpoint)] : [];
  return { checkpoint, path: c.path, unrecorded, broken: [], later };
}

/** The candidate's checkpoint if it reads, is what was recorded, and holds the step its name says. */
function intact(c: Candidate): LoadedCheckpoint | undefined {
  const checkpoint = tryLoad(c.path);
  if (!checkpoint || (c.hash !== undefined && checkpoint.hash !== c.hash) || checkpoint.state.step !== c.step) return undefined;
  return checkpoint;
}

/**
 * A file renamed into place whose steps never reached the store (killed in between) would leave a gap in the history:
 * resume passes over it for a recorded checkpoint. With none recorded, the file is all the work there is.
 */
const beyondHistory = (step: number, rows: CheckpointRow[], recordedUpTo: number) => rows.length > 0 && recordedUpTo < step;

/**
 * Makes the store agree with a run's folder, whose files are the truth: each checkpoint file the store does not know
 * (its writer's service died, or the database refused it) is recorded from its own metadata (retention waits for the
 * run's next checkpoint, which knows the run's --keep); a damaged one, or one that resume would pass over, is deleted.
 * Only for a run no live process trains. Returns the steps recorded and the files deleted.
 */
export function reconcileCheckpoints(store: Store, runId: number, runDir: string): { recorded: number[]; removed: string[] } {
  const rows = store.checkpoints(runId);
  const known = new Set(rows.map((c) => c.path));
  const recordedUpTo = store.lastMetricStep(runId);
  const files = existsSync(runDir) ? readdirSync(runDir).filter((n) => FILE.test(n) && !known.has(join(runDir, n))) : [];
  const done = { recorded: [] as number[], removed: [] as string[] };
  const recorder = new RunRecorder(store, runId, Infinity);
  for (const name of files.sort()) {
    const path = join(runDir, name);
    const c = tryLoad(path);
    if (!c || c.state.step !== Number(FILE.exec(name)![1]) || beyondHistory(c.state.step, rows, recordedUpTo)) {
      rmSync(path, { force: true });
      done.removed.push(path);
      continue;
    }
    const { epoch, loss } = c.state;
    recorder.handle({ type: 'checkpoint', path, step: c.state.step, epoch, loss, size: c.size, hash: c.hash });
    done.recorded.push(c.state.step);
  }
  return done;
}

function tryLoad(path: string): LoadedCheckpoint | undefined {
  try {
    return loadCheckpoint(path);
  } catch {
    return undefined;
  }
}

const rowOf = (runId: number, path: string, c: LoadedCheckpoint) => ({
  runId,
  path,
  step: c.state.step,
  epoch: c.state.epoch,
  loss: c.state.loss,
  size: c.size,
  hash: c.hash,
});

export interface FoundCheckpoint {
  run: RunRow;
  checkpoint: LoadedCheckpoint;
  path: string;
  step: number;
}

/** What `RUN` or `RUN:STEP` names, from the database alone: the run and its recorded checkpoints to try, newest first. */
export interface CheckpointRef {
  run: RunRow;
  candidates: CheckpointRow[];
  /** Set when one step was asked for. */
  step?: number;
}

/**
 * `RUN` or `RUN:STEP` → that run's best validated checkpoint (a fine-tune's, see Store.bestCheckpoint) or else its
 * newest intact one, or the one at STEP; errors name what is missing.
 */
export function checkpointFor(store: Store, spec: string): FoundCheckpoint {
  return loadRef(checkpointRef(store, spec));
}

/** The database half of {@link checkpointFor}: fails fast on a missing run or step, reads no checkpoint file. */
export function checkpointRef(store: Store, spec: string): CheckpointRef {
  const m = /^(\d+)(?::(\d+))?$/.exec(spec.trim());
  if (!m) throw new UserError(`"${spec}": expected RUN or RUN:STEP, e.g. 3 or 3:1200`);
  const run = store.run(Number(m[1]));
  if (!run) throw new UserError(`no run ${m[1]}`, 'not-found');
  const all = store.checkpoints(run.id);
  if (m[2] === undefined) {
    if (!all.length) throw noIntact(run.id);
    const best = bestOf(all);
    return { run, candidates: [...(best ? [best] : []), ...all.reverse().filter((c) => c !== best)] };
  }
  const row = all.find((c) => c.step === Number(m[2]));
  if (!row)
    throw new UserError(
      `run ${run.id} has no checkpoint at step ${m[2]} (it has: ${all.map((c) => c.step).join(', ') || 'none'})`,
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
  if (step === undefined) throw noIntact(run.id);
  throw new UserError(`run ${run.id}: the checkpoint at step ${step} (${candidates[0]!.path}) is missing or damaged`, 'not-found');
}

const noIntact = (runId: number) => new UserError(`run ${runId} has no intact checkpoint yet`, 'not-found');
