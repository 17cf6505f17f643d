import { parseArgs, type ParseArgsConfig } from 'node:util';

export class UsageError extends Error {
  override name = 'UsageError';
}

type Options = NonNullable<ParseArgsConfig['options']>;

/** `node:util` parseArgs with errors that name the flag, as a UsageError. */
export function parse<O extends Options>(args: string[], options: O) {
  try {
    return parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

/** A comma-separated list of numbers, e.g. `--cells 4,8,16,32`. */
export function numberList(flag: string, value: string): number[] {
  const parts = value.split(',').map((s) => Number(s.trim()));
  if (parts.some((n) => !Number.isFinite(n))) throw new UsageError(`--${flag}: expected comma-separated numbers, got "${value}"`);
  return parts;
}

export function positiveInt(flag: string, value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`--${flag}: expected a positive integer, got "${value}"`);
  return n;
}

/** `{ name: { type: 'string' } }` for each name: the many plain string flags of a command. */
export function strings<K extends string>(...names: K[]): Record<K, { type: 'string' }> {
  return Object.fromEntries(names.map((n) => [n, { type: 'string' as const }])) as Record<K, { type: 'string' }>;
}
