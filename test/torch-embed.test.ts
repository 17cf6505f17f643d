import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, test } from 'vitest';
import { SAMPLE_IMAGES } from '../core/home.js';
import { decodeSafetensors } from '../core/safetensors.js';
import { localmimAsync } from './support/cli.js';
import { describeWith, PYTHON } from './support/requirements.js';

// `localmim embed --engine torch`: the app decodes (its evaluation transform), train.py --embed computes the features;
// they equal the tfjs engine's within 1e-4.
const dir = mkdtempSync(join(tmpdir(), 'localmim-torch-embed-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const env = { OMP_NUM_THREADS: '1', LOCALMIM_PYTHON: PYTHON };

describeWith('torch', 'pillow')('embedding on the torch engine', () => {
  test("a run's embeddings of a folder equal the tfjs engine's within 1e-4", async () => {
    const home = join(dir, 'home');
    const config = join(dir, 'tiny.json');
    writeFileSync(
      config,
      JSON.stringify({ model: { D: 32, depth: 4, heads: 2, decoderDim: 32, decoderHeads: 2, imgSize: 32, patchSize: 8 }, seed: 5 }),
    );
    const pre = await localmimAsync(
      ['pretrain', '--json', '--home', home, '--config', config, '--data', SAMPLE_IMAGES, '--max-steps', '2'],
      env,
    );
    expect(pre.code, pre.stderr).toBe(0);
    const embed = async (engine: string) => {
      const out = join(dir, `${engine}.safetensors`);
      const r = await localmimAsync(
        ['embed', '1', '--data', SAMPLE_IMAGES, '--out', out, '--home', home, '--engine', engine, '--json'],
        env,
      );
      expect(r.code, r.stderr).toBe(0);
      return decodeSafetensors(readFileSync(out)).tensors.get('features')!;
    };
    const [ours, theirs] = [await embed('tfjs'), await embed('torch')];
    expect(theirs.shape).toEqual([300, 32]);
    expect(ours.shape).toEqual(theirs.shape);
    let worst = 0;
    for (let i = 0; i < 300; i++) {
      const [a, b] = [ours.values.subarray(i * 32, i * 32 + 32), theirs.values.subarray(i * 32, i * 32 + 32)];
      const gap = Math.hypot(...a.map((v, k) => v - b[k]!)) / Math.hypot(...a);
      worst = Math.max(worst, gap);
    }
    console.log(`largest relative gap over 300 images: ${worst.toExponential(1)}`);
    expect(worst).toBeLessThan(1e-4);
    const bad = await localmimAsync([
      'embed',
      '1',
      '--data',
      SAMPLE_IMAGES,
      '--out',
      join(dir, 'x.npy'),
      '--home',
      home,
      '--engine',
      'gpu',
    ]);
    expect(bad.stderr).toMatch(/--engine: expected tfjs, torch or auto, got "gpu"/);
  }, 300_000);
});
