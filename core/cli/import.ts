import { importWeights } from '../export/import.js';
import { initBackend } from '../backend.js';
import { homeDir, homePaths } from '../home.js';
import { Store } from '../store/store.js';
import { homeFlag, parse, positiveInt, UsageError } from './args.js';

export const summary = 'import timm/MAE ViT or timm/official Swin weights (safetensors) as a run to fine-tune or keep pretraining';

const OPTIONS = {
  heads: { type: 'string', arg: 'H', help: 'attention heads, when neither a config.json beside the file nor the width tells' },
  img: {
    type: 'string',
    arg: 'PX',
    help: 'input size of the imported model; a ViT’s position table is resized (bicubic) to that grid (default: the table’s own size; Swin: config.json beside the file, else 224)',
  },
  name: { type: 'string', arg: 'NAME', help: 'name of the new run (default: imported FILE)' },
  home: homeFlag,
  json: { type: 'boolean', default: false, help: 'print the new run id and model config as JSON' },
} as const;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parse(argv, OPTIONS, { usage: 'localmim import FILE.safetensors [options]', summary });
  if (!positionals[0]) throw new UsageError('missing FILE.safetensors, the weights to import');
  await initBackend();
  const home = homeDir(values.home);
  const paths = homePaths(home);
  const store = new Store(paths.db);
  try {
    const r = await importWeights(store, positionals[0], {
      heads: values.heads ? positiveInt('heads', values.heads) : undefined,
      imgSize: values.img ? positiveInt('img', values.img) : undefined,
      name: values.name,
      home,
      checkpointPath: (id) => paths.checkpoint(id, 0),
    });
    if (values.json) console.log(JSON.stringify(r));
    else console.log(`imported as run ${r.runId}: fine-tune with localmim finetune --from ${r.runId}, or pretrain with --init ${r.runId}`);
  } finally {
    store.close();
  }
}
