import { ConfigError } from '../config.js';
import { UsageError } from './args.js';

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
  analyze: () => import('./analyze.js'),
  runs: () => import('./runs.js'),
  serve: () => import('./serve.js'),
  start: () => import('./start.js'),
  targets: () => import('./targets.js'),
  doctor: () => import('./doctor.js'),
  job: () => import('./job.js'),
  backend: () => import('./backend.js'),
};

function usage(): string {
  return ['usage: localmim <command> [options]', '', 'commands:', ...Object.keys(COMMANDS).map((name) => `  ${name}`)].join('\n');
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    console.log(usage());
    return 0;
  }
  const load = COMMANDS[name];
  if (!load) {
    console.error(`localmim: unknown command "${name}"\n${usage()}`);
    return 2;
  }
  try {
    await (await load()).run(rest);
    return 0;
  } catch (err) {
    const e = err as Error;
    const known = e instanceof UsageError || e instanceof ConfigError || /^[^\s]+: /.test(e.message);
    console.error(`localmim ${name}: ${known ? e.message : (e.stack ?? e.message)}`);
    return e instanceof UsageError ? 2 : 1;
  }
}

process.exitCode = await main(process.argv.slice(2));
