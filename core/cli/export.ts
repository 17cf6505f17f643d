import { join } from 'node:path';
import { EXPORT_FORMATS } from '../api.js';
import { exportRun, type ExportFormat } from '../export/export.js';
import { initBackend } from '../backend.js';
import { parseCheckpointId } from '../runs/checkpoints.js';
import { Store } from '../store/store.js';
import { homeFlag, parse, UsageError } from './args.js';
import { homeDir, homePaths } from '../home.js';

export const summary = 'export the backbone of a run (its latest intact checkpoint, or the one at STEP) with timm names';

const OPTIONS = {
  format: { type: 'string', default: 'safetensors', arg: 'FORMAT', help: 'safetensors (timm/PyTorch), tfjs (ViTs) or onnx (ONNX Runtime)' },
  out: { type: 'string', arg: 'DIR', help: 'folder to write (default: <home>/exports/RUN-STEP-FORMAT)' },
  home: homeFlag,
  json: { type: 'boolean', default: false, help: 'print the folder and files as JSON' },
} as const;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parse(argv, OPTIONS, { usage: 'localmim export RUN[:STEP] [options]', summary });
  if (!positionals[0]) throw new UsageError('missing RUN[:STEP], e.g. localmim export 3 or localmim export 3:1200');
  if (!EXPORT_FORMATS.includes(values.format as ExportFormat))
    throw new UsageError(`--format: expected ${EXPORT_FORMATS.join(', ')}, got "${values.format}"`);
  await initBackend();
  const home = homeDir(values.home);
  const store = new Store(homePaths(home).db);
  try {
    const out = values.out ?? join(home, 'exports', `${positionals[0].replace(':', '-')}-${values.format}`);
    const r = await exportRun(store, parseCheckpointId(positionals[0]), values.format as ExportFormat, out);
    if (values.json) console.log(JSON.stringify(r));
    else console.log(`exported to ${r.dir}: ${r.files.join(', ')}`);
  } finally {
    store.close();
  }
}
