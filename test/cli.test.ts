import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { localmim } from './support/cli.js';
import { readGolden, worstExcess } from './support/golden.js';

interface Golden {
  images: {
    name: string;
    height: number;
    width: number;
    pixels_u8_hwc: number[];
    hog: { nbins: number; scales: { values: number[]; exact_overrides: { index: number[]; value: number[] } | null }[] }[];
  }[];
}

const dir = mkdtempSync(join(tmpdir(), 'localmim-cli-'));
const zoneplate = readGolden<Golden>('hog_targets.json').images.find((i) => i.name === 'zoneplate_64')!;
const png = join(dir, 'zoneplate.png');

beforeAll(async () => {
  await sharp(Buffer.from(zoneplate.pixels_u8_hwc), { raw: { width: 64, height: 64, channels: 3 } })
    .png()
    .toFile(png);
  writeFileSync(join(dir, 'notes.png'), 'this is text, not an image');
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('localmim targets', () => {
  test('prints HOG targets of a PNG in the documented JSON shape', () => {
    const r = localmim(['targets', '--image', png, '--kind', 'hog', '--bins', '9', '--cells', '4,8,16,32', '--json']);
    expect(r.stderr).toBe('');
    const out = JSON.parse(r.stdout) as {
      kind: string;
      bins: number;
      scales: { cell: number; grid: number[]; shape: number[]; values: number[] }[];
    };
    expect(out.kind).toBe('hog');
    expect(out.bins).toBe(9);
    expect(out.scales.map((s) => [s.cell, s.grid, s.shape])).toEqual([
      [4, [16, 16], [256, 27]],
      [8, [8, 8], [64, 27]],
      [16, [4, 4], [16, 27]],
      [32, [2, 2], [4, 27]],
    ]);
    zoneplate.hog[0]!.scales.forEach((official, k) => {
      const exact = official.values.slice();
      official.exact_overrides?.index.forEach((i, j) => (exact[i] = official.exact_overrides!.value[j]!));
      expect(worstExcess(out.scales[k]!.values, exact, () => 3e-6).excess).toBeLessThanOrEqual(0);
    });
  });

  test('pixel targets with --norm-pix', () => {
    const r = localmim(['targets', '--image', png, '--kind', 'pixel', '--cells', '8', '--norm-pix', '--json']);
    const out = JSON.parse(r.stdout) as { kind: string; scales: { shape: number[]; values: number[] }[] };
    expect(out.kind).toBe('pixel');
    expect(out.scales[0]!.shape).toEqual([64, 192]);
    const token = out.scales[0]!.values.slice(0, 192);
    const mean = token.reduce((a, b) => a + b, 0) / 192;
    expect(Math.abs(mean)).toBeLessThan(1e-5);
  });

  test('a file that is not an image is named in a clear error', () => {
    const r = localmim(['targets', '--image', join(dir, 'notes.png'), '--json']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/notes\.png: cannot read as an image/);
  });

  test('bad flags are usage errors naming the flag', () => {
    expect(localmim(['targets', '--image', png, '--cells', '4,x'])).toMatchObject({ code: 2, stderr: expect.stringMatching(/--cells/) });
    expect(localmim(['targets', '--image', png, '--kind', 'sift'])).toMatchObject({ code: 2, stderr: expect.stringMatching(/--kind/) });
  });
});

describe('localmim doctor', () => {
  test('names the chosen backend and why each other one is not used', () => {
    const r = localmim(['doctor', '--json']);
    const report = JSON.parse(r.stdout) as { chosen: string; attempts: { name: string; ok: boolean; reason?: string }[] };
    expect(report.attempts.map((a) => a.name)).toEqual(['tensorflow-gpu', 'webgpu', 'tensorflow', 'wasm', 'cpu']);
    for (const a of report.attempts) if (a.name !== report.chosen) expect(a.reason).toBeTruthy();
  });

  test('LOCALMIM_BACKEND forces a backend, and an unknown one is an error', () => {
    expect(JSON.parse(localmim(['doctor', '--json'], { LOCALMIM_BACKEND: 'cpu' }).stdout).chosen).toBe('cpu');
    expect(localmim(['doctor', '--backend', 'tpu']).stderr).toMatch(/unknown backend "tpu"/);
  });

  test('the slow CPU path is never silent: how much slower, why and the fix, in the report and its text', () => {
    type Slow = { slow?: { factor: number; why: string; fix: string }; native: string };
    const off = JSON.parse(localmim(['doctor', '--json'], { LOCALMIM_BACKEND: 'wasm', LOCALMIM_NATIVE: '0' }).stdout) as Slow;
    expect(off.slow).toEqual({ factor: 10, why: 'LOCALMIM_NATIVE=0 turns the native addon off', fix: 'unset LOCALMIM_NATIVE' });
    expect(localmim(['doctor'], { LOCALMIM_BACKEND: 'wasm', LOCALMIM_NATIVE: '0' }).stdout).toMatch(
      /^slow {6}training runs about 10× slower than it could here: LOCALMIM_NATIVE=0 .*; fix: unset LOCALMIM_NATIVE$/m,
    );
    const cpu = JSON.parse(localmim(['doctor', '--json'], { LOCALMIM_BACKEND: 'cpu' }).stdout) as Slow;
    expect(cpu.slow?.factor).toBeGreaterThan(100);
    const native = JSON.parse(localmim(['doctor', '--json'], { LOCALMIM_BACKEND: 'wasm' }).stdout) as Slow;
    // Where the addon is built (CI requires it), the native path runs and nothing is slow; elsewhere the fix is a compiler.
    if (native.native.startsWith('our sgemm')) expect(native.slow).toBeUndefined();
    else expect(native.slow?.fix).toMatch(/C compiler|command line tools|Build Tools/);
  });
});
