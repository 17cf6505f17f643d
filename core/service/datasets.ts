import { join } from 'node:path';
import { thumbnail } from '../data/decode.js';
import { summarize } from '../data/indexer.js';
import { SAMPLE_IMAGES } from '../home.js';
import type { Context, Handlers } from './context.js';

/** Datasets: folders of images, indexed by a job. */
export const datasetHandlers = (c: Context) =>
  ({
    'datasets.list': () => c.store.datasetSummaries(),
    'datasets.add': (a) => indexing(c, a.path),
    'datasets.addSample': () => indexing(c, SAMPLE_IMAGES),
    'datasets.get': (a) => {
      const d = c.dataset(a.id);
      return {
        ...summarize(c.store, d.id, d.root, { added: 0, updated: 0, unchanged: 0, removed: 0, ignored: 0, seconds: 0 }),
        name: d.name,
        indexedAt: d.indexedAt,
      };
    },
    'datasets.thumbnails': async (a) => {
      const d = c.dataset(a.id);
      const rows = c.store.images(d.id, 'ok');
      // Paths come from the index, never from the request.
      const items = await Promise.all(
        rows.slice(a.offset, a.offset + a.limit).map(async (r) => {
          return {
            path: r.path,
            label: r.label,
            width: r.width,
            height: r.height,
            src: await thumbnail(join(d.root, r.path), 96),
          };
        }),
      );
      return { total: rows.length, items };
    },
  }) satisfies Handlers;

/** Starts indexing and answers at once; the outcome arrives as a dataset.indexed or dataset.error event. */
function indexing(c: Context, path: string): { path: string } {
  c.scheduler.index(path).catch(() => undefined);
  return { path };
}
