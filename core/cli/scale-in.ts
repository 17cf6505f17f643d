import { homeDir, homePaths } from '../home.js';
import { scaleIn } from '../scale-out/folder.js';
import { Store } from '../store/store.js';
import { homeFlag, parse, UsageError } from './args.js';

export const summary = "bring a scale-out job's checkpoints and metrics back as a run";

const OPTIONS = {
  home: homeFlag,
  json: { type: 'boolean', default: false, help: 'print the run id and what was imported as JSON' },
} as const;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parse(argv, OPTIONS, { usage: 'localmim scale-in JOBDIR [options]', summary });
  if (!positionals[0]) throw new UsageError('missing JOBDIR, the folder scale-out wrote');
  const paths = homePaths(homeDir(values.home));
  const store = new Store(paths.db);
  try {
    const r = await scaleIn(store, positionals[0], paths.checkpoint);
    if (values.json) console.log(JSON.stringify(r));
    else
      console.log(
        `${r.created ? 'created' : 'continued'} run ${r.runId} at step ${r.step}: ${r.checkpoints} checkpoint(s), ${r.metrics} step(s) of metrics`,
      );
  } finally {
    store.close();
  }
}
