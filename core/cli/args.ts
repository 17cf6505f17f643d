import { parseArgs, type ParseArgsConfig } from 'node:util';

export class UsageError extends Error {
  override name = 'UsageError';
}

/** Thrown by `parse` on --help/-h with the help text: main prints it to stdout and exits 0. */
export class HelpShown extends Error {
  override name = 'HelpShown';
  constructor(readonly text: string) {
    super('help shown');
  }
}

/**
 * One flag: node:util's option config (`type`, `default`, …) plus what --help says about it: `help`, and
 * `arg`, the value's placeholder (default VALUE). parseArgs ignores keys it does not know.
 */
export type Flag = NonNullable<ParseArgsConfig['options']>[string] & { help?: string; arg?: string };
export type Flags = Record<string, Flag>;

/** What --help prints above the flags: `usage` without the leading "usage: ", and the command's one-line summary. */
/** `--home DIR`, which every command that reads the data folder takes. */
export const homeFlag = {
  type: 'string',
  arg: 'DIR',
  help: 'data folder (default: LOCALMIM_HOME, else the per-user app data folder)',
} as const satisfies Flag;

export interface About {
  usage: string;
  summary?: string;
}

type Parsed<O extends Flags> = ReturnType<typeof parseArgs<{ args: string[]; options: O; allowPositionals: true; strict: true }>>;

/** `node:util` parseArgs with errors that name the flag, as a UsageError, and --help/-h as HelpShown. */
export function parse<O extends Flags>(args: string[], options: O, about?: About): Parsed<O> {
  const withHelp: Flags = { ...options, help: { type: 'boolean', short: 'h' } };
  let parsed;
  try {
    parsed = parseArgs({ args, options: withHelp, allowPositionals: true, strict: true });
  } catch (err) {
    // Help wins over a bad flag beside it: whoever asks for help may not know the flags yet.
    if (args.includes('--help') || args.includes('-h')) throw new HelpShown(helpText(options, about));
    throw new UsageError(flagProblem(err as NodeJS.ErrnoException, about));
  }
  if (parsed.values.help) throw new HelpShown(helpText(options, about));
  return parsed as unknown as Parsed<O>;
}

/** node's message without its advice on positionals that start with a dash, pointing at --help instead. */
function flagProblem(err: NodeJS.ErrnoException, about?: About): string {
  const first = err.message.split('\n')[0]!;
  if (err.code !== 'ERR_PARSE_ARGS_UNKNOWN_OPTION') return first;
  const command = about?.usage.split(' ').slice(0, 2).join(' ');
  return `${first.split('. ')[0]}${command ? ` (${command} --help lists the options)` : ''}`;
}

export function helpText(options: Flags, about?: About): string {
  const rows = Object.entries(options).map(([name, f]) => {
    const left = `--${name}${f.type === 'string' ? ` ${f.arg ?? 'VALUE'}` : ''}`;
    const shown = f.default !== undefined && f.default !== false && !(Array.isArray(f.default) && !f.default.length);
    return [left, [f.help, shown && `(default: ${String(f.default)})`].filter(Boolean).join(' ')] as const;
  });
  rows.push(['-h, --help', 'show this help']);
  const width = Math.max(...rows.map(([l]) => l.length)) + 2;
  return [
    ...(about ? [`usage: ${about.usage}`, ''] : []),
    ...(about?.summary ? [about.summary, ''] : []),
    'options:',
    ...rows.map(([l, r]) => `  ${l.padEnd(width)}${r}`.trimEnd()),
  ].join('\n');
}

/** A comma-separated list of numbers, e.g. `--cells 4,8,16,32`. */
export function numberList(flag: string, value: string): number[] {
  const parts = value.split(',').map((s) => Number(s.trim()));
  if (parts.some((n) => !Number.isFinite(n))) throw new UsageError(`--${flag}: expected comma-separated numbers, got "${value}"`);
  return parts;
}

/** A decimal number as written by hand: no hex, octal, binary, `Infinity` or blanks. */
export const DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;

/** Decimal digits only: `0x10`, `1e3`, `16.0` and ` 16` are no integer flags, whatever Number() makes of them. */
const DIGITS = /^\d+$/;

export function positiveInt(flag: string, value: string): number {
  const n = Number(value);
  if (!DIGITS.test(value) || !Number.isSafeInteger(n) || n < 1)
    throw new UsageError(`--${flag}: expected a positive integer, got "${value}"`);
  return n;
}

export function nonNegativeInt(flag: string, value: string): number {
  const n = Number(value);
  if (!DIGITS.test(value) || !Number.isSafeInteger(n)) throw new UsageError(`--${flag}: expected a non-negative integer, got "${value}"`);
  return n;
}
