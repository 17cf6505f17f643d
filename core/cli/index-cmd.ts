import { indexFolder, type IndexSummary } from '../data/indexer.js';
import { homeDir, homePaths } from '../home.js';
import { Store } from '../store/store.js';
import { homeFlag, parse, positiveInt, UsageError, type Flags } from './args.js';
import { duration, StatusLine } from './progress.js';

export const summary = 'index a folder of images (incremental): sizes, hashes, rejected files';

/** How a folder is indexed: here, and where pretrain and finetune index theirs. */
export const indexFlags = {
  'max-pixels': { type: 'string', arg: 'N', help: 'reject images with more pixels than this (default 80000000)' },
  'min-side': { type: 'string', arg: 'PX', help: 'reject images whose shorter side is below this (default 16)' },
} as const satisfies Flags;

/** The index flags, checked. */
export function indexOptions(values: { 'max-pixels'?: string; 'min-side'?: string }): { maxPixels?: number; minSide?: number } {
  const n = (flag: keyof typeof indexFlags) => (values[flag] === undefined ? undefined : positiveInt(flag, values[flag]));
  return { maxPixels: n('max-pixels'), minSide: n('min-side') };
}

const OPTIONS = {
  home: homeFlag,
  ...indexFlags,
  json: { type: 'boolean', default: false, help: 'print the summary as JSON, without progress' },
} as const;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parse(argv, OPTIONS, { usage: 'localmim index DIR [options]', summary });
  const dir = positionals[0];
  if (!dir) throw new UsageError('missing DIR, the folder of images to index');
  const store = new Store(homePaths(homeDir(values.home)).db);
  try {
    const s = await indexWithProgress(store, dir, { ...indexOptions(values), quiet: values.json });
    if (values.json) console.log(JSON.stringify(s));
    else printSummary(s);
  } finally {
    store.close();
  }
}

export async function indexWithProgress(
  store: Store,
  dir: string,
  o: { maxPixels?: number; minSide?: number; quiet?: boolean },
): Promise<IndexSummary> {
  const line = new StatusLine();
  const s = await indexFolder(store, dir, {
    maxPixels: o.maxPixels,
    minSide: o.minSide,
    onProgress: o.quiet
      ? undefined
      : (p) => line.update(`indexing ${p.done}/${p.total} files  ${p.filesPerS.toFixed(0)} files/s  ETA ${duration(p.etaS)}`),
  });
  line.done();
  return s;
}

export function printSummary(s: IndexSummary): void {
  const log = (t: string) => console.error(t);
  log(
    `${s.root}: ${s.images} images (${s.added} new, ${s.updated} changed, ${s.unchanged} unchanged, ${s.removed} removed) in ${s.seconds.toFixed(1)} s`,
  );
  log(
    `  formats: ${
      Object.entries(s.byFormat)
        .map(([f, n]) => `${f} ${n}`)
        .join(', ') || 'none'
    }`,
  );
  log(
    `  shorter side: ${
      s.sizeHistogram
        .filter((b) => b.count)
        .map((b) => `${b.label} px: ${b.count}`)
        .join(', ') || '—'
    }`,
  );
  if (s.ignored) log(`  ${s.ignored} files without an image extension ignored`);
  for (const group of s.duplicates) log(`  duplicate: ${group.join(' = ')}`);
  for (const [what, list] of [
    ['rejected', s.rejected],
    ['skipped', s.skipped],
  ] as const) {
    if (list.length) log(`  ${list.length} ${what}:`);
    for (const r of list) log(`    ${r.path}: ${r.reason}`);
  }
}
