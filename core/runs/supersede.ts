import { existsSync, mkdirSync, readdirSync, renameSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { writeAtomic } from '../atomic.js';
import type { Store } from '../store/store.js';

/**
 * Sets aside what a run did after `step` when it resumes from an older checkpoint (`--resume RUN:STEP`): its later
 * checkpoints and previews move to `folder`, and its metrics and kNN scores past `step` are written there as JSON
 * lines before the store forgets them. The run's history then continues from `step`, and nothing of the stretch it
 * leaves is lost. Returns the steps of the checkpoints set aside, or undefined (and makes no folder) when nothing came
 * after `step`; a failed move is undone before the error goes on.
 */
export function supersede(
  store: Store,
  runId: number,
  runDir: string,
  step: number,
  later: { path: string; step: number }[],
  folder: string,
): number[] | undefined {
  const lines = (rows: { step: number }[]) => rows.filter((r) => r.step > step).map((r) => `${JSON.stringify(r)}\n`);
  const metrics = lines(store.metrics(runId));
  const knn = lines(store.knn(runId));
  const previews = join(runDir, 'previews');
  const moves = [
    ...later.filter((c) => existsSync(c.path)).map((c) => [c.path, join(folder, basename(c.path))] as const),
    ...(existsSync(previews) ? readdirSync(previews) : [])
      .filter((n) => /^\d+$/.test(n) && Number(n) > step)
      .map((n) => [join(previews, n), join(folder, 'previews', n)] as const),
  ];
  if (!later.length && !metrics.length && !knn.length && !moves.length) return undefined;
  mkdirSync(folder, { recursive: true });
  if (metrics.length) writeAtomic(join(folder, 'metrics.jsonl'), metrics.join(''));
  if (knn.length) writeAtomic(join(folder, 'knn.jsonl'), knn.join(''));
  const done: (typeof moves)[number][] = [];
  try {
    for (const m of moves) {
      mkdirSync(dirname(m[1]), { recursive: true });
      renameSync(m[0], m[1]);
      done.push(m);
    }
  } catch (err) {
    for (const [from, to] of done.reverse()) renameSync(to, from);
    throw err;
  }
  for (const c of store.checkpoints(runId)) if (c.step > step) store.deleteCheckpoint(c.id);
  return [...new Set(later.map((c) => c.step))].sort((a, b) => a - b);
}
