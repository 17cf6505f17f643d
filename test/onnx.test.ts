import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { DECODERS, parseRunConfig } from '../core/config.js';
import { evalImage } from '../core/data/preprocess.js';
import { toOnnx } from '../core/export/onnx.js';
import { SAMPLE_IMAGES } from '../core/home.js';
import { classifierFor, featuresOf } from '../core/model/classifier.js';
import { Rng } from '../core/random.js';
import { decodeSafetensors } from '../core/safetensors.js';
import type { RgbImage } from '../core/image.js';
import { localmim } from './support/cli.js';
import { channelsFirst, syntheticImages } from './support/images.js';
import './support/setup.js';

const dir = mkdtempSync(join(tmpdir(), 'localmim-onnx-'));
const home = join(dir, 'home');
// Not the default 224 px / patch 16: 40 px, patch 8, a 5 × 5 grid; 3 heads of 8.
const S = 40;
const config = {
  model: { D: 24, depth: 3, heads: 3, decoderDim: 16, decoderHeads: 2, imgSize: S, patchSize: 8 },
  optim: { epochs: 1, batch: 8 },
};
const images = ['coffee-07.jpg', 'rocket-03.jpg', 'chelsea-11.jpg'].map((f) => join(SAMPLE_IMAGES, f));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const run = (args: string[]) => {
  const r = localmim([...args, '--home', home]);
  expect(r.code, r.stderr).toBe(0);
  return r.stdout;
};
const features = (spec: string, image: string) =>
  (JSON.parse(run(['features', spec, '--image', image, '--json'])) as { values: number[] }).values;

const input = (images: RgbImage[]) =>
  new ort.Tensor('float32', channelsFirst(images), [images.length, 3, images[0]!.height, images[0]!.width]);
/** The image files as the app sees them (the evaluation transform). */
const batch = async (files: string[]) => input(await Promise.all(files.map((f) => evalImage(f, S))));

const expectClose = (got: ArrayLike<number>, want: number[], what: string) => {
  expect(got.length).toBe(want.length);
  want.forEach((v, i) => expect(Math.abs(v - got[i]!), `${what} ${i}`).toBeLessThan(1e-4));
};

beforeAll(() => {
  writeFileSync(join(dir, 'tiny.json'), JSON.stringify(config));
  const labeled = join(dir, 'labeled');
  for (const f of readdirSync(SAMPLE_IMAGES).filter((f) => /^(coffee|rocket)-[01]/.test(f))) {
    mkdirSync(join(labeled, f.split('-')[0]!), { recursive: true });
    symlinkSync(join(SAMPLE_IMAGES, f), join(labeled, f.split('-')[0]!, f));
  }
  run(['pretrain', '--json', '--config', join(dir, 'tiny.json'), '--max-steps', '3']); // run 1
  run(['finetune', '--json', '--from', '1', '--data', labeled, '--epochs', '1', '--batch', '16', '--recipe', 'official', '--no-baselines']); // run 2
});

describe('ONNX export', () => {
  test('model.onnx gives the features `localmim features` prints, at batch 1 and 3', async () => {
    const out = join(dir, 'pretrained');
    run(['export', '1', '--format', 'onnx', '--out', out]);
    expect(readdirSync(out).sort()).toEqual(['README.md', 'config.json', 'model.onnx']);
    expect(readFileSync(join(out, 'README.md'), 'utf8')).toMatch(/onnxruntime[\s\S]*ort\.InferenceSession\.create/);
    const session = await ort.InferenceSession.create(join(out, 'model.onnx'));
    expect([session.inputNames, session.outputNames]).toEqual([['image'], ['features']]);
    const want = images.map((f) => features('1', f));

    const one = await session.run({ image: await batch(images.slice(0, 1)) });
    expect(one.features!.dims).toEqual([1, 24]);
    expectClose(one.features!.data as Float32Array, want[0]!, 'feature');
    const three = await session.run({ image: await batch(images) });
    expect(three.features!.dims).toEqual([3, 24]);
    expectClose(three.features!.data as Float32Array, want.flat(), 'feature');
    await session.release();
  });

  test('a fine-tuned run adds logits: fc_norm, then head, of the same features', async () => {
    const out = join(dir, 'finetuned');
    run(['export', '2', '--format', 'onnx', '--out', out]);
    const session = await ort.InferenceSession.create(join(out, 'model.onnx'));
    expect(session.outputNames).toEqual(['features', 'logits']);
    const r = await session.run({ image: await batch(images) });
    const want = images.map((f) => features('2', f));
    expectClose(r.features!.data as Float32Array, want.flat(), 'feature');
    expect(r.logits!.dims).toEqual([3, 2]);

    // The head by hand, from the safetensors export's timm-named fc_norm and head (LayerNorm eps 1e-6).
    const st = join(dir, 'finetuned-st');
    run(['export', '2', '--out', st]);
    const t = decodeSafetensors(readFileSync(join(st, 'model.safetensors'))).tensors;
    const get = (n: string) => t.get(n)!.values;
    const logits = want.flatMap((f) => {
      const mu = f.reduce((a, b) => a + b, 0) / f.length;
      const sd = Math.sqrt(f.reduce((a, b) => a + (b - mu) ** 2, 0) / f.length + 1e-6);
      const y = f.map((v, d) => ((v - mu) / sd) * get('fc_norm.weight')[d]! + get('fc_norm.bias')[d]!);
      return [0, 1].map((k) => y.reduce((a, v, d) => a + v * get('head.weight')[k * y.length + d]!, get('head.bias')[k]!));
    });
    expectClose(r.logits!.data as Float32Array, logits, 'logit');
    await session.release();
  });

  test('Swin: features and logits as the app computes them, with shifted windows padded at the grid edge', async () => {
    // 112 px: grids 28, 14, 7 with window 7 and shift 3, so the shifted windows overhang the grid; 64 px: window 4.
    for (const extra of [{ imgSize: 112 }, { imgSize: 64, windowSize: 4 }]) {
      const model = parseRunConfig({ model: { size: 'swin-tiny', patchSize: 4, ...DECODERS.swin, ...extra } }).model;
      const c = classifierFor(model, { classes: 2 }, 3);
      // Norms, biases and the head moved off their initial values, so that each shows.
      const rng = new Rng(4);
      const moved = [...c.params.vars].map(([n, v]) => {
        const by = v.shape.length === 1 ? 0.2 : n.startsWith('head.') ? 0.05 : 0;
        return [n, Float32Array.from(v.dataSync(), (x) => x + by * rng.normal())] as const;
      });
      c.params.assign(new Map(moved));
      const tensors = new Map(moved.map(([n, values]) => [n, { shape: c.params.get(n).shape, values }]));
      const session = await ort.InferenceSession.create(toOnnx({ model, tensors, classes: ['a', 'b'] }, {}));
      const images = syntheticImages(2, model.imgSize, 7);
      const r = await session.run({ image: input(images) });
      const [f, logits] = [featuresOf((n) => c.params.get(n), model, images), c.logits(images)];
      expect(r.features!.dims).toEqual([2, 192]);
      expectClose(r.features!.data as Float32Array, Array.from(f.dataSync()), 'feature');
      expectClose(r.logits!.data as Float32Array, Array.from(logits.dataSync()), 'logit');
      f.dispose();
      logits.dispose();
      c.dispose();
      await session.release();
    }
  });
});
