import { resolve } from 'node:path';
import { embedFolder } from '../analysis/embed.js';
import { DecodeCache } from '../data/cache.js';
import { paramsOf } from '../export/backbone.js';
import { detectTorch } from '../engine.js';
import { homeDir, homePaths } from '../home.js';
import { torchEmbedder } from '../runs/torch.js';
import { Store } from '../store/store.js';
import { homeFlag, parse, UsageError } from './args.js';
import { checkpointOf } from './checkpoint-input.js';
import { indexWithProgress } from './index-cmd.js';
import { engineChoice, engineOf } from './session.js';
import { StatusLine } from './progress.js';

export const summary = "write the backbone's mean-pooled features of every image of a folder, with their paths (resumable)";

const OPTIONS = {
  data: { type: 'string', arg: 'DIR', help: 'folder of images (required); class = first sub-folder, when there is one' },
  out: { type: 'string', arg: 'FILE', help: 'features [N, D] as .safetensors or .npy (required); the paths go to FILE.jsonl' },
  home: homeFlag,
  backend: { type: 'string', arg: 'NAME', help: 'tfjs backend to use (default: the fastest that works; see localmim doctor)' },
  engine: {
    type: 'string',
    arg: 'NAME',
    help: 'tfjs, torch (PyTorch, see localmim doctor) or auto: torch where it has a GPU (default tfjs)',
  },
  json: { type: 'boolean', default: false, help: 'print the result as JSON' },
} as const;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parse(argv, OPTIONS, { usage: 'localmim embed RUN[:STEP] --data DIR --out FILE [options]', summary });
  if (!values.data) throw new UsageError('--data DIR is required');
  if (!values.out || !/\.(safetensors|npy)$/.test(values.out))
    throw new UsageError('--out FILE is required, ending in .safetensors or .npy');
  const engine = engineOf(engineChoice(values.engine));
  const { checkpoint, backbone: b } = await checkpointOf(positionals[0], values);
  const torch = engine === 'torch' ? torchEmbedder(detectTorch(), b.tensors, b.model) : undefined;
  try {
    const home = homeDir(values.home);
    const store = new Store(homePaths(home).db);
    let rows;
    try {
      const indexed = await indexWithProgress(store, values.data, { quiet: values.json });
      rows = store
        .images(indexed.datasetId, 'ok')
        .map((r) => ({ abs: resolve(values.data!, r.path), hash: r.hash!, path: r.path, label: r.label }));
    } finally {
      store.close();
    }
    if (!rows.length) throw new UsageError(`--data: ${values.data} has no usable images`);
    const line = new StatusLine();
    const started = performance.now();
    const r = await embedFolder(paramsOf(b.tensors), b.model, rows, {
      embed: torch?.embed,
      out: resolve(values.out),
      weights: checkpoint.hash,
      cache: new DecodeCache(homePaths(home).cache),
      onProgress: (done, total) =>
        !values.json &&
        line.update(`embedding ${done}/${total} images  ${(done / ((performance.now() - started) / 1000)).toFixed(1)} img/s`),
    });
    line.done();
    if (values.json) console.log(JSON.stringify(r));
    else console.error(`${r.images} images → ${r.out} [${r.images}, ${r.dim}] and ${r.paths} (${r.images - r.computed} already written)`);
  } finally {
    torch?.dispose();
  }
}
