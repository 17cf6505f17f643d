import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { STREAMS } from '../core/random.js';

describe('seed streams', () => {
  it('gives each kind of draw its own stream', () => {
    const ids = Object.values(STREAMS);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('are mirrored name for name by the torch engine', () => {
    const source = readFileSync(new URL('../core/torch/localmim_torch/data.py', import.meta.url), 'utf8');
    const table = /^STREAMS = \{(.*)\}$/m.exec(source)?.[1] ?? '';
    const python = Object.fromEntries([...table.matchAll(/'(\w+)': (\d+)/g)].map(([, name, id]) => [name, Number(id)]));
    expect(python).toEqual(STREAMS);
  });
});
