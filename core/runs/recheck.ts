import { join } from 'node:path';
import type { IndexSummary } from '../data/indexer.js';
import { UserError } from '../errors.js';
import type { Store } from '../store/store.js';

/** What a resumed run found of its images: the dataset it continues on, and one line when anything changed. */
export interface DatasetCheck {
  datasetId: number;
  missing: number;
  /** Found by content hash at another path or in another folder. */
  moved: number;
  added: number;
  line?: string;
}

/**
 * Before a run resumes, its folder is indexed again — or `data`, where its images are now — and the images it
 * trained on are matched by content hash: images deleted since are dropped, moved ones found, new ones taken in.
 * `index` indexes a folder into the store (with progress, in the terminal). Undefined for a run without a dataset.
 */
export async function recheckDataset(
  store: Store,
  runId: number,
  data: string | undefined,
  index: (root: string) => Promise<IndexSummary>,
): Promise<DatasetCheck | undefined> {
  const run = store.run(runId);
  const before = run?.datasetId == null ? undefined : store.datasetById(run.datasetId);
  if (!run || (!before && data === undefined)) return undefined;
  const images = (id: number, root: string) => store.images(id, 'ok').map((r) => ({ abs: join(root, r.path), hash: r.hash! }));
  const old = before ? images(before.id, before.root) : [];
  const summary = await index(data ?? before!.root).catch((err: Error) => {
    if (data !== undefined) throw new UserError(err.message);
    throw new UserError(
      `run ${runId}: its images cannot be found (${err.message}); if the folder moved, resume with --data DIR, its new place (in the app: "Resume from this folder")`,
      'conflict',
    );
  });
  const now = images(summary.datasetId, summary.root);
  const oldPaths = new Set(old.map((i) => i.abs));
  const oldHashes = new Set(old.map((i) => i.hash));
  const nowHashes = new Set(now.map((i) => i.hash));
  const missing = old.filter((i) => !nowHashes.has(i.hash)).length;
  const moved = now.filter((i) => oldHashes.has(i.hash) && !oldPaths.has(i.abs)).length;
  const added = now.filter((i) => !oldHashes.has(i.hash)).length;
  const line =
    missing || moved || added
      ? `run ${runId}: images re-checked in ${summary.root}: ${missing} missing, ${moved} moved/matched by content, ${added} new (${now.length} to train on)`
      : undefined;
  return { datasetId: summary.datasetId, missing, moved, added, line };
}
