import { HelpShown, UsageError } from './args.js';

interface Command {
  summary: string;
  run(argv: string[]): Promise<void>;
}

const COMMANDS: Record<string, () => Promise<Command>> = {
  index: () => import('./index-cmd.js'),
  pretrain: () => import('./pretrain.js'),
  finetune: () => import('./finetune.js'),
  export: () => import('./export.js'),
  import: () => import('./import.js'),
  features: () => import('./features.js'),
  embed: () => import('./embed.js'),
  analyze: () => import('./analyze.js'),
  runs: () => import('./runs.js'),
  serve: () => import('./serve.js'),
  start: () => import('./start.js'),
  targets: () => import('./targets.js'),
  doctor: () => import('./doctor.js'),
  job: () => import('./job.js'),
  backend: () => import('./backend.js'),
  'scale-out': () => import('./scale-out.js'),
  'scale-in': () => import('./scale-in.js'),
};

function usage(): string {
  return [
    'usage: localmim <command> [options]',
    '',
    'commands:',
    ...Object.keys(COMMANDS).map((name) => `  ${name}`),
    '',
    'localmim <command> --help (or localmim help <command>) lists its options.',
  ].join('\n');
}

/**
 * A closed pipe on stdout (`localmim runs --json | head -1`) ends the command quietly, as a reader that has
 * seen enough; one on stderr is ignored, so that the exit code still tells success from failure.
 */
function onClosedPipe(stream: NodeJS.WriteStream, then: () => void): void {
  stream.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
    then();
  });
}

/** Commands whose `--json` prints one event per line: every failing exit ends it with an `error` event. */
const EVENT_STREAMS = new Set(['pretrain', 'finetune']);

/**
 * Exactly one line per error (the stack too with LOCALMIM_DEBUG=1); 2 for usage errors, else 1. With `--json`, an
 * event stream gets the `error` event too, naming the run when one was claimed.
 */
function report(name: string, err: unknown, argv: string[] = process.argv.slice(3)): number {
  const e = err instanceof Error ? err : new Error(String(err));
  const message = e.message.split('\n')[0]!;
  if (EVENT_STREAMS.has(name) && argv.includes('--json'))
    console.log(JSON.stringify({ type: 'error', runId: (e as { runId?: number }).runId ?? null, message }));
  console.error(`localmim ${name}: ${message}`);
  if (process.env.LOCALMIM_DEBUG === '1') console.error(e.stack);
  return e instanceof UsageError ? 2 : 1;
}

async function main(argv: string[]): Promise<number> {
  const [first, ...rest] = argv;
  if (!first || first === '--help' || first === '-h' || (first === 'help' && !rest[0])) {
    console.log(usage());
    return 0;
  }
  // `localmim help CMD` is `localmim CMD --help`.
  const [name, args] = first === 'help' ? [rest[0]!, ['--help']] : [first, rest];
  const load = COMMANDS[name];
  if (!load) {
    console.error(`localmim: unknown command "${name}"\n${usage()}`);
    return 2;
  }
  try {
    await (await load()).run(args);
    return 0;
  } catch (err) {
    if (!(err instanceof HelpShown)) return report(name, err, args);
    console.log(err.text);
    return 0;
  }
}

onClosedPipe(process.stdout, () => process.exit(0));
onClosedPipe(process.stderr, () => {});
process.on('uncaughtException', (err) => process.exit(report(process.argv[2] ?? '', err)));
process.exitCode = await main(process.argv.slice(2));
