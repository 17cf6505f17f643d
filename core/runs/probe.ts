import { join } from 'node:path';
import type { ProbeSet } from '../analysis/knn.js';
import { labeledSplit } from '../data/labels.js';
import { UserError } from '../errors.js';
import type { RunProbe, Store } from '../store/store.js';

/** Half of each class is the query part, the rest the reference part (a `train/`, `val/` folder gives its own split). */
const QUERY_FRACTION = 0.5;

/** A run's probe set from its labeled dataset, split by the run's seed; a missing or unlabeled dataset is the user's mistake. */
export function probeSetOf(store: Store, probe: RunProbe, seed: number): ProbeSet {
  const d = store.datasetById(probe.datasetId);
  if (!d) throw new UserError(`probe: no dataset ${probe.datasetId}`, 'not-found');
  let split;
  try {
    split = labeledSplit(store.images(d.id), QUERY_FRACTION, seed, `the probe set ${d.name}`);
  } catch (err) {
    throw new UserError(`probe: ${(err as Error).message}`);
  }
  const item = (t: { path: string; hash: string; label: number }) => ({ abs: join(d.root, t.path), hash: t.hash, label: t.label });
  if (!split.val.length) throw new UserError(`probe: the probe set ${d.name} needs at least two images in some class`);
  return { classes: split.classes, reference: split.train.map(item), query: split.val.map(item), every: probe.every };
}
