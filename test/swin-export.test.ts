import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { DECODERS, parseRunConfig, swinDims } from '../core/config.js';
import { evalImage } from '../core/data/preprocess.js';
import { toTimmSwin } from '../core/export/timmSwin.js';
import { SAMPLE_IMAGES } from '../core/home.js';
import { paramStore } from '../core/model/params.js';
import { Rng } from '../core/random.js';
import { decodeSafetensors, encodeSafetensors, type NamedTensor } from '../core/safetensors.js';
import { localmimAsync } from './support/cli.js';
import { channelsFirst } from './support/images.js';
import { describeWith, PYTHON } from './support/requirements.js';
import './support/setup.js';

const dir = mkdtempSync(join(tmpdir(), 'localmim-swin-export-'));
const home = join(dir, 'home');
const image = join(dir, 'probe.png');
const pixels = join(dir, 'probe.json');
const labeled = join(dir, 'labeled');
const READER = fileURLToPath(new URL('../tools/timm-swin-features.py', import.meta.url));
const model = parseRunConfig({ model: { size: 'swin-tiny', imgSize: 112, patchSize: 4, ...DECODERS.swin } }).model;
const S = swinDims(model).depths.length;
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// The CLI runs as a child process, awaited: a long synchronous child would stall the test worker's calls to vitest.
const run = async (args: string[]) => {
  const r = await localmimAsync([...args, '--home', home]);
  expect(r.code, r.stderr).toBe(0);
  return r.stdout;
};
const features = async (spec: string) =>
  (JSON.parse(await run(['features', spec, '--image', image, '--json'])) as { shape: number[]; values: number[] }).values;
const tensorsOf = (file: string) => decodeSafetensors(readFileSync(file), file).tensors;

/** The features timm computes from an export, by the standalone reader. */
function timmFeatures(exportDir: string): { features: number[]; logits?: number[] } {
  const r = spawnSync(PYTHON, [READER, exportDir, pixels], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as { features: number[]; logits?: number[] };
}

beforeAll(async () => {
  await sharp(join(SAMPLE_IMAGES, 'coffee-07.jpg')).resize(112, 112).png().toFile(image);
  const { data, width, height } = await evalImage(image, 112);
  writeFileSync(pixels, JSON.stringify({ height, width, data: Array.from(data) }));
  // A timm Swin state dict from a swin-tiny's tensors, LayerNorm gains and biases moved off 1 and 0 so that each norm shows.
  const params = paramStore(model, 5);
  const rng = new Rng(9);
  const timm = new Map<string, NamedTensor>();
  for (const [name, v] of params.vars) {
    if (!name.startsWith('layers.') && !name.startsWith('patch_embed.') && name !== `norm.${S - 1}.weight` && name !== `norm.${S - 1}.bias`)
      continue;
    const values = Float32Array.from(v.dataSync());
    if (v.shape.length === 1) values.forEach((x, i) => (values[i] = x + 0.2 * rng.normal()));
    timm.set(name.replace(`norm.${S - 1}.`, 'norm.'), { shape: v.shape, values });
  }
  params.dispose();
  mkdirSync(join(dir, 'timm'));
  writeFileSync(join(dir, 'timm', 'model.safetensors'), encodeSafetensors(toTimmSwin(timm)));
  await run(['import', join(dir, 'timm', 'model.safetensors'), '--img', '112', '--json']); // run 1

  for (const cls of ['coffee', 'rocket']) {
    mkdirSync(join(labeled, cls), { recursive: true });
    for (const f of readdirSync(SAMPLE_IMAGES)
      .filter((f) => f.startsWith(`${cls}-`))
      .slice(0, 8))
      symlinkSync(join(SAMPLE_IMAGES, f), join(labeled, cls, f));
  }
  await run([
    'finetune',
    '--json',
    '--from',
    '1',
    '--data',
    labeled,
    '--epochs',
    '1',
    '--batch',
    '4',
    '--recipe',
    'official',
    '--no-baselines',
  ]); // run 2
}, 600_000);

describe('Swin export and import (timm names)', () => {
  test('import reads a timm Swin: the model from its shapes, and exporting it gives the same tensors back', async () => {
    const out = join(dir, 'e1');
    await run(['export', '1', '--format', 'safetensors', '--out', out]);
    const back = tensorsOf(join(out, 'model.safetensors'));
    const given = tensorsOf(join(dir, 'timm', 'model.safetensors'));
    expect([...back.keys()].sort()).toEqual([...given.keys()].sort());
    for (const [n, t] of given) {
      expect(back.get(n)!.shape, n).toEqual(t.shape);
      expect(back.get(n)!.values, n).toEqual(t.values);
    }
  });

  test("a pretraining-layout run exports timm's keys, config.json names the architecture", async () => {
    const out = join(dir, 'e1');
    const t = tensorsOf(join(out, 'model.safetensors'));
    for (const n of [
      'layers.0.blocks.0.attn.qkv.weight',
      'layers.0.blocks.0.attn.relative_position_bias_table',
      'layers.1.downsample.reduction.weight',
      'layers.1.downsample.norm.weight',
      `layers.${S - 1}.downsample.reduction.weight`,
      'patch_embed.norm.weight',
      'norm.weight',
    ])
      expect(t.has(n), n).toBe(true);
    expect(t.get('layers.1.downsample.reduction.weight')!.shape).toEqual([96, 192]);
    expect(
      [...t.keys()].filter((n) => /^(decoder|hog_enc|norm\.\d|head)|layers\.0\.downsample|relative_position_index|attn_mask/.test(n)),
    ).toEqual([]);
    const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
    expect(cfg.architecture).toMatch(/^swin_(tiny|small|base|large)_patch4_window7_224$/);
    expect(cfg.model_args).toMatchObject({
      img_size: 112,
      patch_size: 4,
      window_size: 7,
      embed_dim: 48,
      depths: [2, 2, 2],
      num_heads: [3, 6, 12],
    });
    expect(readFileSync(join(out, 'README.md'), 'utf8')).toMatch(
      /Swin backbone[\s\S]*forward_head\(model\.forward_features\(x\), pre_logits=True\)/,
    );

    expect((await features('1')).length).toBe(192);
  });

  test('an export imports back without --img (its config.json gives the size) with the same features; a broken file is refused naming it', async () => {
    const { runId, model: m } = JSON.parse(await run(['import', join(dir, 'e1', 'model.safetensors'), '--json'])) as {
      runId: number;
      model: { imgSize: number };
    };
    expect(m.imgSize).toBe(112);
    expect(await features(String(runId))).toEqual(await features('1'));
    const t = tensorsOf(join(dir, 'e1', 'model.safetensors'));
    t.delete('layers.1.downsample.reduction.weight');
    mkdirSync(join(dir, 'broken'));
    writeFileSync(join(dir, 'broken', 'model.safetensors'), encodeSafetensors(t));
    const r = await localmimAsync(['import', join(dir, 'broken', 'model.safetensors'), '--img', '112', '--home', home]);
    expect(r.code).not.toBe(0);
    expect(r.stderr.trim()).toMatch(/broken\/model\.safetensors: no tensor layers\.0\.downsample\.reduction\.weight/);
  });

  test('a fine-tuned Swin exports its norm and head.fc', async () => {
    const out = join(dir, 'e2');
    await run(['export', '2', '--out', out]);
    const t = tensorsOf(join(out, 'model.safetensors'));
    expect(t.get('head.fc.weight')!.shape).toEqual([2, 192]);
    expect(t.get('norm.weight')!.shape).toEqual([192]);
    expect(JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'))).toMatchObject({ num_classes: 2, label_names: ['coffee', 'rocket'] });
  });

  test('analyze --image on Swin: each block attends within the window of the query, rows sum to 1', async () => {
    type Layer = { stage: number; block: number; grid: number; window: number; shift: number; nmi: number; kl: number; mean: number[] };
    const query = 10 * 28 + 10; // (10, 10) on the 28×28 first-stage grid
    const out = JSON.parse(await run(['analyze', '1', '--image', image, '--query', String(query), '--json'])) as { layers: Layer[] };
    expect(out.layers.map((l) => [l.stage, l.block, l.window, l.shift])).toEqual([
      [0, 0, 7, 0],
      [0, 1, 7, 3],
      [1, 0, 7, 0],
      [1, 1, 7, 3],
      [2, 0, 7, 0],
      [2, 1, 7, 0],
    ]);
    const support = (l: Layer) => l.mean.flatMap((v, k) => (v > 0 ? [[Math.floor(k / l.grid), k % l.grid]] : []));
    const square = (y0: number, x0: number, w: number) => [...Array(w * w).keys()].map((k) => [y0 + Math.floor(k / w), x0 + (k % w)]);
    // Plain windows of 7 from 0; shifted ones from 3 (the official roll by −3); the last stage is one window.
    expect(support(out.layers[0]!)).toEqual(square(7, 7, 7));
    expect(support(out.layers[1]!)).toEqual(square(10, 10, 7));
    expect(support(out.layers[2]!)).toEqual(square(0, 0, 7)); // (5, 5) on the 14×14 grid
    expect(support(out.layers[4]!)).toHaveLength(49);
    for (const l of out.layers) {
      expect(Math.abs(l.mean.reduce((a, b) => a + b, 0) - 1)).toBeLessThan(1e-4);
      expect(l.nmi).toBeGreaterThanOrEqual(0);
      expect(l.nmi).toBeLessThanOrEqual(1);
      expect(l.kl).toBeGreaterThanOrEqual(0);
    }
  });

  test('tfjs export, the attention analyses and a linear probe refuse a Swin run in one line', async () => {
    const runs = async () => (JSON.parse(await run(['runs', '--json'])) as unknown[]).length;
    const before = await runs();
    for (const args of [
      ['export', '1', '--format', 'tfjs', '--out', join(dir, 'tfjs')],
      ['analyze', '1', '--data', labeled],
      ['finetune', '--from', '1', '--data', labeled, '--linear-probe'],
    ]) {
      const r = await localmimAsync([...args, '--home', home]);
      expect(r.code).not.toBe(0);
      // The fine-tune indexes its folder (progress on stderr) before the request is checked; the error is the last line.
      const lines = r.stderr.trim().split('\n');
      if (args[0] !== 'finetune') expect(lines).toHaveLength(1);
      expect(lines.at(-1)).toMatch(/Swin/);
    }
    expect(await runs()).toBe(before); // nothing was created
  });

  test('ONNX: model.onnx of the pretraining-layout run and of the fine-tuned one gives their features', async () => {
    const img = await evalImage(image, 112);
    for (const spec of ['1', '2']) {
      const out = join(dir, `onnx-${spec}`);
      await run(['export', spec, '--format', 'onnx', '--out', out]);
      const session = await ort.InferenceSession.create(join(out, 'model.onnx'));
      const r = await session.run({ image: new ort.Tensor('float32', channelsFirst([img]), [1, 3, 112, 112]) });
      const got = r.features!.data as Float32Array;
      (await features(spec)).forEach((v, d) => expect(Math.abs(v - got[d]!), `feature ${d}`).toBeLessThan(1e-4));
      expect(session.outputNames).toEqual(spec === '2' ? ['features', 'logits'] : ['features']);
      await session.release();
    }
  });

  // Last, on the exports above: timm's layout in plain PyTorch, independent of this project's code.
  describeWith('torch')('timm reads the exports (tools/timm-swin-features.py)', () => {
    test("the pretraining-layout run's: timm's features match ours", async () => {
      const ours = await features('1');
      const theirs = timmFeatures(join(dir, 'e1')).features;
      theirs.forEach((v, d) => expect(Math.abs(v - ours[d]!), `feature ${d}`).toBeLessThan(1e-4));
    });

    test("the fine-tuned run's: the same features, and a logit per class", async () => {
      const ours = await features('2');
      const theirs = timmFeatures(join(dir, 'e2'));
      theirs.features.forEach((v, d) => expect(Math.abs(v - ours[d]!), `feature ${d}`).toBeLessThan(1e-4));
      expect(theirs.logits).toHaveLength(2);
    });
  });
});
