import { initBackend } from '../backend.js';
import { homeDir, homePaths } from '../home.js';
import { scaleOut } from '../scale-out/folder.js';
import { Store } from '../store/store.js';
import { homeFlag, parse, UsageError } from './args.js';
import { configFromFlags } from './pretrain.js';

export const summary = "write a job folder that trains a run (or a config) with PyTorch's DistributedDataParallel";

const OPTIONS = {
  config: { type: 'string', arg: 'FILE', help: 'a run config as JSON, as pretrain --config (instead of RUN)' },
  data: { type: 'string', arg: 'DIR', help: 'folder of images the job trains on (required)' },
  out: { type: 'string', arg: 'JOBDIR', help: 'the job folder to write; must not exist or be empty (required)' },
  home: homeFlag,
  json: { type: 'boolean', default: false, help: 'print the job folder and its config as JSON' },
} as const;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parse(argv, OPTIONS, {
    usage: 'localmim scale-out (RUN[:STEP] | --config FILE) --data DIR --out JOBDIR [options]',
    summary,
  });
  const spec = positionals[0];
  if (!spec === !values.config) throw new UsageError('give either a RUN[:STEP] to continue or --config FILE for a new run');
  if (!values.data) throw new UsageError('--data DIR is required: the images the job trains on');
  if (!values.out) throw new UsageError('--out JOBDIR is required: where the job folder goes');
  const from = spec ? { run: spec } : { config: configFromFlags({ config: values.config }) };
  await initBackend();
  const store = new Store(homePaths(homeDir(values.home)).db);
  try {
    const job = await scaleOut(store, { from, data: values.data, out: values.out });
    if (values.json) console.log(JSON.stringify({ out: job.out, images: job.images, config: job.config }));
    else {
      console.log(`wrote ${job.out} (${job.images} images); launch it with:\n`);
      console.log(`  cd ${job.out} && python3 train.py\n`);
      console.log(`more GPUs, nodes and SLURM: ${job.out}/README.md; bring it back with localmim scale-in ${job.out}`);
    }
  } finally {
    store.close();
  }
}
