import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, test } from 'vitest';
import { SAMPLE_IMAGES } from '../core/home.js';
import { decodeSafetensors } from '../core/safetensors.js';
import { localmimAsync } from './support/cli.js';
import { describeWith, PYTHON } from './support/requirements.js';

// `localmim embed --engine torch`: the app decodes (its evaluation transform), train.py --embed computes the features;
// they equal the tfjs engine's within 1e-4, of a ViT and of a Swin.
const dir = mkdtempSync(join(tmpdir(), 'localmim-torch-embed-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const env = { OMP_NUM_THREADS: '1', LOCALMIM_PYTHON: PYTHON };

/** A run of `model` pretrained 2 steps in its own home, embedded on both engines: the features [300, dim] of each. */
async function embedBoth(name: string, model: object, dim: number) {
  const home = join(dir, name);
  const config = join(dir, `${name}.json`);
  writeFileSync(config, JSON.stringify({ model, seed: 5 }));
  const pre = await localmimAsync(
    ['pretrain', '--json', '--home', home, '--config', config, '--data', SAMPLE_IMAGES, '--max-steps', '2'],
    env,
  );
  expect(pre.code, pre.stderr).toBe(0);
  const embed = async (engine: string) => {
    const out = join(dir, `${name}-${engine}.safetensors`);
    const r = await localmimAsync(['embed', '1', '--data', SAMPLE_IMAGES, '--out', out, '--home', home, '--engine', engine, '--json'], env);
    expect(r.code, r.stderr).toBe(0);
    return decodeSafetensors(readFileSync(out)).tensors.get('features')!;
  };
  const [ours, theirs] = [await embed('tfjs'), await embed('torch')];
  expect(theirs.shape).toEqual([300, dim]);
  expect(ours.shape).toEqual(theirs.shape);
  let worst = 0;
  for (let i = 0; i < 300; i++) {
    const [a, b] = [ours.values.subarray(i * dim, (i + 1) * dim), theirs.values.subarray(i * dim, (i + 1) * dim)];
    worst = Math.max(worst, Math.hypot(...a.map((v, k) => v - b[k]!)) / Math.hypot(...a));
  }
  console.log(`${name}: largest relative gap over 300 images: ${worst.toExponential(1)}`);
  return worst;
}

describeWith('torch', 'pillow')('embedding on the torch engine', () => {
  test("a run's embeddings of a folder equal the tfjs engine's within 1e-4", async () => {
    const vit = { D: 32, depth: 4, heads: 2, decoderDim: 32, decoderHeads: 2, imgSize: 32, patchSize: 8 };
    expect(await embedBoth('vit', vit, 32)).toBeLessThan(1e-4);
    const bad = await localmimAsync([
      'embed',
      '1',
      '--data',
      SAMPLE_IMAGES,
      '--out',
      join(dir, 'x.npy'),
      '--home',
      join(dir, 'vit'),
      '--engine',
      'gpu',
    ]);
    expect(bad.stderr).toMatch(/--engine: expected tfjs, torch or auto, got "gpu"/);
  }, 300_000);

  // Two stages, the first with shifted windows; the backbone's final norm is the pretraining's last latent norm.
  test("a Swin run's embeddings equal the tfjs engine's within 1e-4", async () => {
    const swin = {
      size: 'swin-tiny',
      D: 32,
      depths: [2, 2],
      stageHeads: [1, 2],
      windowSize: 4,
      decoderDim: 32,
      decoderHeads: 2,
      imgSize: 32,
      patchSize: 4,
    };
    expect(await embedBoth('swin', swin, 64)).toBeLessThan(1e-4);
  }, 300_000);
});
