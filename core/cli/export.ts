import { join } from 'node:path';
import { exportRun, type ExportFormat } from '../export/export.js';
import { initBackend } from '../backend.js';
import { Store } from '../store/store.js';
import { parse, UsageError } from './args.js';
import { homeDir, homePaths } from '../home.js';

export const summary = 'export a backbone: localmim export RUN[:STEP] --format safetensors|tfjs [--out DIR]';

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parse(argv, {
    format: { type: 'string', default: 'safetensors' },
    out: { type: 'string' },
    home: { type: 'string' },
    json: { type: 'boolean', default: false },
  });
  if (!positionals[0]) throw new UsageError('usage: localmim export RUN[:STEP] --format safetensors|tfjs [--out DIR]');
  if (values.format !== 'safetensors' && values.format !== 'tfjs')
    throw new UsageError(`--format: expected safetensors or tfjs, got "${values.format}"`);
  await initBackend();
  const home = homeDir(values.home);
  const store = new Store(homePaths(home).db);
  try {
    const out = values.out ?? join(home, 'exports', `${positionals[0].replace(':', '-')}-${values.format}`);
    const r = await exportRun(store, positionals[0], values.format as ExportFormat, out);
    if (values.json) console.log(JSON.stringify(r));
    else console.log(`exported to ${r.dir}: ${r.files.join(', ')}`);
  } finally {
    store.close();
  }
}
