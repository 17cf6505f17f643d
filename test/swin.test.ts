import * as tf from '@tensorflow/tfjs';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { parseRunConfig, swinDims, type ModelConfig } from '../core/config.js';
import { SwinLocalMIM, swinLocalMimParams, swinMask } from '../core/model/swin-localmim.js';
import { count, declare, resolve } from '../core/model/module.js';
import { layerNorm } from '../core/model/ops.js';
import { disposePlanTensors, planTensors, swinBackboneParams, swinEncode, unitPatches } from '../core/model/swin.js';
import { groupWindows, knapsack, swinPlan } from '../core/model/swin-windows.js';
import { normalize, toTensor } from '../core/image.js';
import { Rng } from '../core/random.js';
import type { RgbImage } from '../core/image.js';
import { pretrainModel } from '../core/train/pretrain.js';
import { TrainStep } from '../core/train/step.js';
import { renderPreview } from '../core/analysis/preview.js';
import { configFromFlags } from '../core/cli/pretrain.js';
import { estimate } from '../core/runs/estimate.js';
import { SAMPLE_IMAGES } from '../core/home.js';
import { localmim } from './support/cli.js';
import { formulaValues, readGolden, worstExcess } from './support/golden.js';
import './support/setup.js';

interface SwinGolden {
  config: { img_size: number; patch_size: number; embed_dim: number; depths: number[]; num_heads: number[]; window_size: number };
  images: string[];
  param_init: { parameters: { name: string; shape: number[]; requires_grad: boolean }[] };
  finetune_features: { shape: number[]; pooled: number[]; features: number[] };
  cases: {
    target: 'hog' | 'pixel';
    n_images: number;
    mask: number[];
    latent_shapes: number[][];
    latent_first16: number[][];
    per_stage_loss: number[];
    total_loss: number;
    grads: Record<string, { shape: number[]; values: number[] }>;
    preds?: number[][];
    targets?: number[][];
    preds_every_101?: number[][];
    preds_stats?: [number, number][];
    targets_every_101?: number[][];
  }[];
}

const golden = readGolden<SwinGolden>('swin_tiny.json');

const configFor = (target: 'hog' | 'pixel'): ModelConfig =>
  parseRunConfig({
    model: {
      size: 'swin-tiny',
      imgSize: golden.config.img_size,
      patchSize: golden.config.patch_size,
      D: golden.config.embed_dim,
      depths: golden.config.depths,
      stageHeads: golden.config.num_heads,
      windowSize: golden.config.window_size,
      decoderDim: 16,
      decoderHeads: 2,
      decoderDepth: 1,
      target,
      normPix: true,
    },
  }).model;

const images = golden.images.map((b64): RgbImage => ({ height: 224, width: 224, data: new Uint8Array(Buffer.from(b64, 'base64')) }));

function goldenModel(target: 'hog' | 'pixel'): SwinLocalMIM {
  const model = new SwinLocalMIM(configFor(target), 0);
  model.params.assign(new Map([...model.params.vars].map(([name, v]) => [name, formulaValues(name, v.shape)])));
  return model;
}

test('every official parameter exists under its name and shape (without the encoder. prefix)', () => {
  const model = new SwinLocalMIM(configFor('hog'), 0);
  const official = golden.param_init.parameters;
  const ours = new Map(model.params.entries().map(([name, t]) => [name, t.shape]));
  // The official relative_position_index buffers are derived from the window, not state (timm keeps them out of its state dict).
  const officialState = official.filter((p) => !p.name.endsWith('relative_position_index'));
  expect(new Set(model.params.vars.keys())).toEqual(new Set(official.filter((p) => p.requires_grad).map((p) => p.name)));
  for (const p of officialState) expect(ours.get(p.name), p.name).toEqual(p.shape);
  model.dispose();
});

describe.each(golden.cases.map((c, i) => [i, c] as const))('official forward, case %i', (_, c) => {
  test(`${c.target}, ${c.mask.filter(Boolean).length}/49 masked: predictions, targets, losses and gradients`, async () => {
    const model = goldenModel(c.target);
    const batch = model.prepareMasked(images.slice(0, c.n_images), Float32Array.from(c.mask));
    const vars = [...model.params.vars.values()];
    const names = [...model.params.vars.keys()];
    let kept: tf.Tensor[] = [];
    const { value, grads } = tf.variableGrads(() => {
      const out = model.forward(batch);
      kept = [...out.preds, ...out.losses, ...out.latents].map((t) => tf.keep(tf.clone(t)));
      return out.loss;
    }, vars);
    const S = 4;
    const preds = await Promise.all(kept.slice(0, S).map((t) => t.data() as Promise<Float32Array>));
    const losses = await Promise.all(kept.slice(S, 2 * S).map((t) => t.data()));
    const latents = kept.slice(2 * S);
    const targets = await Promise.all(batch.targets.map((t) => t.data()));
    latents.forEach((z, k) => {
      expect(z.shape).toEqual(c.latent_shapes[k]);
      const first = z.reshape([-1]).slice(0, 16).dataSync();
      expect(worstExcess(first, c.latent_first16[k]!, () => 1e-4).excess, `latent ${k}`).toBeLessThanOrEqual(0);
    });
    losses.forEach((l, k) => expect(Math.abs(l[0]! / c.per_stage_loss[k]! - 1), `loss ${k}`).toBeLessThan(1e-5));
    expect(Math.abs((await value.data())[0]! / c.total_loss - 1)).toBeLessThan(1e-5);
    preds.forEach((p, k) => {
      const every = (a: ArrayLike<number>) => Float32Array.from({ length: Math.ceil(a.length / 101) }, (_, i) => a[101 * i]!);
      const [ours, ref] = c.preds ? [p, c.preds[k]!] : [every(p), c.preds_every_101![k]!];
      const worst = worstExcess(ours, ref, () => 1e-4);
      expect(worst.excess, `stage ${k} prediction ${worst.index}`).toBeLessThanOrEqual(0);
      if (c.preds_stats) {
        const sum = p.reduce((a, v) => a + v, 0);
        expect(Math.abs(sum - c.preds_stats[k]![0]!)).toBeLessThan(1e-5 * p.length);
      }
      const t = c.targets?.[k] ?? c.targets_every_101?.[k];
      if (t) expect(worstExcess(c.targets ? targets[k]! : every(targets[k]!), t, () => 1e-4).excess, `target ${k}`).toBeLessThanOrEqual(0);
    });
    for (const [name, g] of Object.entries(c.grads)) {
      const ours = await grads[vars[names.indexOf(name)]!.name]!.data();
      const scale = Math.max(...g.values.map(Math.abs));
      const worst = worstExcess(ours, g.values, () => 1e-3 * scale + 1e-7);
      expect(worst.excess, `gradient of ${name} at ${worst.index} (scale ${scale})`).toBeLessThanOrEqual(0);
    }
    expect(names.length).toBeGreaterThan(0);
    tf.dispose([value, ...Object.values(grads), ...kept]);
    model.disposeBatch(batch);
    model.dispose();
  });
});

test('on every token, with true coordinates and timm merge order, the encoder is the official fine-tuning Swin', async () => {
  const model = goldenModel('hog');
  const d = model.dims;
  const P = (name: string) => (name === 'norm.weight' || name === 'norm.bias' ? finalNorm[name] : model.params.get(name));
  const finalNorm = {
    'norm.weight': tf.tensor(formulaValues('norm.weight', [64])),
    'norm.bias': tf.tensor(formulaValues('norm.bias', [64])),
  };
  const plan = planTensors(
    d,
    swinPlan(
      d,
      Int32Array.from({ length: 49 }, (_, u) => u),
      'true',
    ),
  );
  const [pooled, features] = tf.tidy(() => {
    const patches = unitPatches(normalize(toTensor(images)), d, plan.plan.units);
    const last = swinEncode(resolve(declare(swinBackboneParams(d)), P), patches, plan, { merge: 'timm', norm2Eps: 1e-5 }).at(-1)!;
    const mean = tf.mean(last, 1);
    return [mean, layerNorm(mean, P('norm.weight'), P('norm.bias'))];
  });
  const f = golden.finetune_features;
  expect(pooled.shape).toEqual(f.shape);
  expect(worstExcess(await pooled.data(), f.pooled, () => 1e-4).excess).toBeLessThanOrEqual(0);
  expect(worstExcess(await features.data(), f.features, () => 1e-4).excess).toBeLessThanOrEqual(0);
  tf.dispose([pooled, features, ...Object.values(finalNorm)]);
  disposePlanTensors(plan);
  model.dispose();
});

describe('grouping bookkeeping', () => {
  test('knapsack and group_windows as the official DP (expected values printed by the official functions)', () => {
    expect(knapsack(10, [3, 4, 5, 6])).toEqual([10, [1, 3]]);
    expect(groupWindows(49, [49, 12, 30, 7, 19, 49])).toEqual([[0], [1, 2, 3], [5], [4]]);
    expect(groupWindows(20, [5, 9, 3, 12, 7, 1, 20, 4])).toEqual([[0, 2, 3], [6], [1, 4, 7], [5]]);
  });

  test('the official mask rule masks int(0.75·49) + 1 = 37 of 49 units, one mask per batch', () => {
    const d = swinDims(configFor('hog'));
    expect(d.nMasked).toBe(37);
    const mask = swinMask(new Rng(3).fill(d.units), d);
    expect(mask.reduce((a, b) => a + b, 0)).toBe(37);
  });

  test('every visible token lands in exactly one group slot, and all of them with the full token set', () => {
    const d = swinDims(configFor('hog'));
    for (const units of [Int32Array.from({ length: 49 }, (_, u) => u), Int32Array.of(0, 3, 9, 10, 24, 40, 48)]) {
      const plan = swinPlan(d, units, 'true');
      for (const s of plan.stages)
        for (const g of [s.plain, s.shifted]) {
          if (!g?.order) continue;
          const seen = [...g.order].filter((n) => n >= 0).sort((a, b) => a - b);
          expect(seen).toEqual([...Array(s.N).keys()]);
          expect(g.GS).toBeLessThanOrEqual(49);
        }
    }
  });
});

const smallImages = Array.from({ length: 2 }, (_, b): RgbImage => {
  const data = new Uint8Array(112 * 112 * 3);
  for (let i = 0; i < data.length; i++) data[i] = (((i * (7 + b)) % 251) + ((i >> 5) % 37) * 3) % 256;
  return { height: 112, width: 112, data };
});

describe('training', () => {
  const small = parseRunConfig({
    model: { size: 'swin-tiny', imgSize: 112, patchSize: 4, D: 24, decoderDim: 32, decoderHeads: 4, stageHeads: [2, 4, 8] },
  }).model;

  test('40 steps on one batch: the loss drops, and tf.memory stays flat', () => {
    const model = new SwinLocalMIM(small, 0);
    const step = new TrainStep(model, parseRunConfig({ optim: { lr: 2e-3, weightDecay: 0.05 } }).optim);
    const noise = new Rng(1).fill(model.noiseSize());
    const losses: number[] = [];
    let tensors = 0;
    for (let i = 0; i < 40; i++) {
      // Prepared and freed every step, as in training: the same images under the same mask.
      const batch = model.prepare(smallImages, noise);
      const out = step.run([batch], 2e-3);
      losses.push(out.dataSync()[0]!);
      out.dispose();
      model.disposeBatch(batch);
      if (i === 2) tensors = tf.memory().numTensors;
      if (i > 2) expect(tf.memory().numTensors).toBe(tensors);
    }
    expect(losses.every(Number.isFinite)).toBe(true);
    expect(losses.at(-1)!).toBeLessThan(0.7 * losses[0]!);
    step.dispose();
    model.dispose();
  });

  test('no weight decay on biases, norms, relative position tables and mask tokens (official run_pretrain.py)', () => {
    const model = new SwinLocalMIM(small, 0);
    const decayed = [...model.params.vars].filter(([n, v]) => model.decays(n, v.shape)).map(([n]) => n);
    expect(decayed).toContain('layers.0.blocks.0.attn.qkv.weight');
    expect(decayed).toContain('layers.0.downsample.reduction.weight');
    expect(decayed.some((n) => /position_bias|token|\.bias$|norm/.test(n))).toBe(false);
    model.dispose();
  });
});

describe('pipeline', () => {
  test.each([
    { size: 'swin-tiny', imgSize: 112 },
    { size: 'swin-tiny', imgSize: 224, D: 16, depths: [2, 2, 4, 2], stageHeads: [1, 2, 4, 8], target: 'pixel' },
  ])('the estimated parameter count is the model’s: %j', (model) => {
    const cfg = parseRunConfig({ model: { patchSize: 4, decoderDim: 128, decoderHeads: 4, ...model } });
    const m = new SwinLocalMIM(cfg.model, 0);
    const trainable = [...m.params.vars.values()].reduce((n, v) => n + v.size, 0);
    m.dispose();
    const e = estimate(cfg, 300, 'wasm');
    expect(e.params).toBe(trainable);
    expect(e.secondsPerEpoch).toBeGreaterThan(0);
  });

  test('--model swin-* takes patch 4, its image side, the official Swin decoders and schedule floor', () => {
    const c = configFromFlags({ model: 'swin-t' });
    expect(c.model).toMatchObject({ size: 'swin-t', imgSize: 224, patchSize: 4, decoderDim: 128, decoderHeads: 4, decoderDepth: 1 });
    expect(c.optim).toMatchObject({ minLr: 0, blr: 1e-4, epochs: 400, warmupEpochs: 40, batch: 256, accumIter: 8 });
    expect(c.model).toMatchObject({ target: 'hog', nbins: 18, hogBias: true });
    expect(configFromFlags({ model: 'swin-b', preset: 'localmim-pixel' }).model).toMatchObject({ target: 'pixel', hogBias: false });
    expect(swinDims(c.model)).toMatchObject({ widths: [96, 192, 384, 768], cells: [8, 16, 32, 32], decoderDims: [64, 128, 128, 128] });
    expect(configFromFlags({ model: 'swin-tiny', img: '112' }).model).toMatchObject({ imgSize: 112, patchSize: 4 });
    expect(() => configFromFlags({ model: 'swin-tiny', img: '100' })).toThrow(/imgSize/);
  });

  test("--preset mae on a Swin is GreenMIM's baseline: its one-block decoder and its own scripts' schedules", () => {
    const b = configFromFlags({ model: 'swin-b', preset: 'mae' });
    // GreenMIM modeling/model_factory.py, green_mim_swin_base_patch4_dec512b1 (as the paper's §4.3): decoder_embed_dim
    // 512, decoder_depth 1, decoder_num_heads 16 (8 is only MaskedAutoencoder's default), on the last stage, norm_pix_loss.
    expect(b.model).toMatchObject({
      variant: 'global',
      target: 'pixel',
      normPix: true,
      decoderDim: 512,
      decoderDepth: 1,
      decoderHeads: 16,
    });
    // Counted from GreenMIM's MaskedAutoencoder (modeling/base_green_models.py) for Swin-B: decoder_embed 1024 → 512,
    // mask_token, one timm Block, decoder_norm, decoder_pred 512 → 32²·3; decoder_pos_embed is fixed.
    const d = 512;
    const linear = (i: number, o: number) => i * o + o;
    const block = 2 * d + linear(d, 3 * d) + linear(d, d) + 2 * d + linear(d, 4 * d) + linear(4 * d, d);
    expect(count(swinLocalMimParams(b.model).decoder)).toBe(linear(1024, d) + d + block + 2 * d + linear(d, 32 * 32 * 3));
    // scripts/run_greenmim_swin_base.sh: --blr 1.5e-4 --warmup_epochs 40 (min_lr: main_pretrain.py's 0).
    expect(b.optim).toMatchObject({ blr: 1.5e-4, warmupEpochs: 40, minLr: 0 });
    // scripts/run_greenmim_swin_large_win14.sh: --blr 1.0e-4, 800 epochs with 40 of warmup, 256 on each of 8 GPUs.
    expect(configFromFlags({ model: 'swin-l', preset: 'mae' }).optim).toMatchObject({
      blr: 1e-4,
      epochs: 800,
      warmupEpochs: 40,
      batch: 256,
      accumIter: 8,
    });
    // The CPU model keeps its own length, with GreenMIM's rate.
    expect(configFromFlags({ model: 'swin-tiny', preset: 'mae' }).optim).toMatchObject({ blr: 1.5e-4, warmupEpochs: 10, epochs: 100 });
  });

  test('previews render every stage of a Swin run, under its one mask', async () => {
    const cfg = parseRunConfig({ model: { size: 'swin-tiny', imgSize: 112, patchSize: 4, D: 24, stageHeads: [2, 4, 8] } });
    const model = pretrainModel(cfg.model, 0);
    const probes = smallImages.map((im) => ({ ...im, data: Uint8Array.from(im.data) }));
    const before = tf.memory().numTensors;
    const rendered = await renderPreview(model, probes, new Rng(5).fill(model.noiseSize(probes.length)));
    expect(tf.memory().numTensors).toBe(before);
    expect(rendered).toHaveLength(2);
    expect(rendered[0]!.scales.map((s) => s.cell)).toEqual([8, 16, 16]);
    for (const p of rendered) for (const s of p.scales) expect(s.pred.subarray(1, 4).toString()).toBe('PNG');
    model.dispose();
  });

  test('localmim pretrain --model swin-tiny --img 112 --batch 4 --max-steps 3 --json', () => {
    const home = mkdtempSync(join(tmpdir(), 'swin-cli-'));
    try {
      const r = localmim([
        'pretrain',
        '--model',
        'swin-tiny',
        '--img',
        '112',
        '--batch',
        '4',
        '--max-steps',
        '3',
        '--json',
        '--home',
        home,
      ]);
      expect(r.code, r.stderr).toBe(0);
      const events = r.stdout
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      const start = events.find((e) => e.type === 'start')!;
      expect(start.model).toEqual({
        family: 'swin',
        targets: [
          [196, 27],
          [49, 27],
          [49, 27],
        ],
      });
      const steps = events.filter((e) => e.type === 'step') as { losses: number[]; loss: number }[];
      expect(steps).toHaveLength(3);
      for (const s of steps) {
        expect(s.losses).toHaveLength(3);
        expect(Number.isFinite(s.loss)).toBe(true);
      }
      expect(events.some((e) => e.type === 'checkpoint')).toBe(true);
      // A new run from this one's backbone keeps its Swin shape (decoders start fresh).
      const init = localmim(['pretrain', '--init', '1', '--batch', '4', '--max-steps', '1', '--json', '--home', home]);
      expect(init.code, init.stderr).toBe(0);
      const next = JSON.parse(init.stdout.split('\n')[0]!) as { model: unknown; config: { model: object } };
      expect(next.model).toMatchObject({ family: 'swin' });
      expect(next.config.model).toMatchObject({ size: 'swin-tiny', imgSize: 112, patchSize: 4 });
      // Paper Fig. 5 on a Swin pretraining run: the loss's gradient norm on each block, stage by stage.
      const image = join(
        SAMPLE_IMAGES,
        readdirSync(SAMPLE_IMAGES).find((f) => f.endsWith('.jpg'))!,
      );
      const analyzed = localmim(['analyze', '1', '--image', image, '--json', '--home', home]);
      expect(analyzed.code, analyzed.stderr).toBe(0);
      const { gradNorms } = JSON.parse(analyzed.stdout) as { gradNorms: number[] };
      expect(gradNorms).toHaveLength(6);
      expect(gradNorms.every((g) => Number.isFinite(g) && g > 0)).toBe(true);
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});
