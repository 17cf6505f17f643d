import { homeDir, homePaths, isAlive } from '../home.js';
import { recoverRuns, runCheckpoints } from '../runs/reconcile.js';
import { bestOf, Store, type ResumeRow } from '../store/store.js';
import { homeFlag, parse, positiveInt, UsageError } from './args.js';
import { probeSummary, resultLine } from './progress.js';

export const summary = 'list runs, or show one run: its last metrics, checkpoints and config';

const OPTIONS = {
  home: homeFlag,
  json: { type: 'boolean', default: false, help: 'print as JSON' },
} as const;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parse(argv, OPTIONS, { usage: 'localmim runs [show ID] [options]', summary });
  const home = homeDir(values.home);
  const store = new Store(homePaths(home).db);
  try {
    store.markInterrupted(isAlive);
    for (const line of recoverRuns(store, home)) console.error(line);
    if (positionals[0] === 'show') return show(store, home, positiveInt('ID', positionals[1] ?? ''), values.json);
    if (positionals.length) throw new UsageError(`unknown runs subcommand "${positionals[0]}" (use: localmim runs [show ID])`);
    const runs = store.runs().map((r) => ({ ...r, lastLoss: store.metrics(r.id).at(-1)?.loss ?? null }));
    if (values.json) return console.log(JSON.stringify(runs));
    if (!runs.length) return console.log('no runs yet: start one with localmim pretrain');
    console.log('id  status       step    epoch   loss     backend  name');
    for (const r of runs)
      console.log(
        `${String(r.id).padEnd(3)} ${r.status.padEnd(12)} ${String(r.step).padEnd(7)} ${r.epoch.toFixed(2).padEnd(7)} ${r.lastLoss?.toFixed(4).padEnd(8) ?? '—'.padEnd(8)} ${r.backend.padEnd(8)} ${r.name}`,
      );
  } finally {
    store.close();
  }
}

function show(store: Store, home: string, id: number, json: boolean): void {
  const run = store.run(id);
  if (!run) throw new UsageError(`no run ${id}`);
  const metrics = store.metrics(id);
  const checkpoints = runCheckpoints(store, id, homePaths(home).run(id));
  const resumes = store.resumes(id);
  if (json) return console.log(JSON.stringify({ run, lastMetrics: metrics.at(-1) ?? null, checkpoints, resumes }));
  console.log(`run ${run.id}: ${run.name}  [${run.status}]  backend ${run.backend}`);
  console.log(`created ${run.createdAt}, updated ${run.updatedAt}; step ${run.step}, epoch ${run.epoch.toFixed(2)}`);
  if (run.error) console.log(`error: ${run.error}`);
  if (run.probeResult) console.log(probeSummary(run.probeResult));
  const last = metrics.at(-1);
  if (last)
    console.log(
      `last: step ${last.step} loss ${last.loss.toFixed(4)} [${last.losses.map((l) => l.toFixed(4)).join(', ')}] lr ${last.lr.toExponential(2)} ${last.imagesPerS.toFixed(1)} img/s`,
    );
  if (run.finetuneResult) console.log(resultLine(run.finetuneResult));
  const best = bestOf(checkpoints);
  console.log(best ? `checkpoints (* best validation top-1: the one export and --from ${run.id} use):` : 'checkpoints:');
  for (const c of checkpoints) {
    const top1 = c.valTop1 === null ? '' : `  val top-1 ${(100 * c.valTop1).toFixed(1)} %`;
    console.log(
      `${c === best ? '*' : ' '} step ${c.step}  loss ${c.loss?.toFixed(4) ?? '—'}${top1}  ${(c.size / 1e6).toFixed(1)} MB  ${c.path}${c.file === 'present' ? '' : `  [${c.file}]`}`,
    );
  }
  for (const r of resumes) console.log(describeResume(r));
  console.log(`config: ${JSON.stringify(run.config, null, 2)}`);
}

/** `resumed at step 4 (…): blr 0.002 → 0.0001; checkpoints 8, 12 and the history after step 4 set aside in DIR`. */
function describeResume(r: ResumeRow): string {
  const changes = Object.entries(r.changes).map(([k, [a, b]]) => `${k} ${a === null ? '—' : String(a)} → ${String(b)}`);
  const aside =
    r.folder &&
    `${r.superseded.length ? `checkpoints ${r.superseded.join(', ')} and ` : ''}the history after step ${r.fromStep} set aside in ${r.folder}`;
  const what = [changes.join(', '), aside].filter(Boolean).join('; ');
  return `resumed at step ${r.fromStep} (${r.time})${what ? `: ${what}` : ''}`;
}
