import * as tf from '@tensorflow/tfjs';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { evalImage } from '../core/data/preprocess.js';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { SAMPLE_IMAGES } from '../core/home.js';
import { launchNodeJob } from '../core/jobs/launch.js';
import { resizePosEmbed, sinCosPosEmbed } from '../core/model/posEmbed.js';
import { Rng } from '../core/random.js';
import { encodeSafetensors } from '../core/safetensors.js';
import { Service } from '../core/service/service.js';
import { Store } from '../core/store/store.js';
import { loadCheckpoint } from '../core/train/checkpoint.js';
import { localmim } from './support/cli.js';
import './support/setup.js';

const dir = mkdtempSync(join(tmpdir(), 'localmim-export-'));
const home = join(dir, 'home');
const image = join(dir, 'probe.png');
const config = {
  model: { D: 32, depth: 4, heads: 2, decoderDim: 16, decoderHeads: 2, imgSize: 32, patchSize: 8, taps: [0, 1, 2, 3] },
  optim: { epochs: 1, batch: 16 },
};
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const run = (args: string[]) => {
  const r = localmim([...args, '--home', home]);
  expect(r.code, r.stderr).toBe(0);
  return r.stdout;
};
const features = (spec: string) =>
  (JSON.parse(run(['features', spec, '--image', image, '--json'])) as { shape: number[]; values: number[] }).values;

beforeAll(async () => {
  writeFileSync(join(dir, 'tiny.json'), JSON.stringify(config));
  await sharp(join(SAMPLE_IMAGES, 'coffee-07.jpg')).resize(32, 32).png().toFile(image);
  const labeled = join(dir, 'labeled');
  for (const f of readdirSync(SAMPLE_IMAGES).filter((f) => /^(coffee|rocket)-/.test(f))) {
    mkdirSync(join(labeled, f.split('-')[0]!), { recursive: true });
    symlinkSync(join(SAMPLE_IMAGES, f), join(labeled, f.split('-')[0]!, f));
  }
  run(['pretrain', '--json', '--config', join(dir, 'tiny.json')]); // run 1
  run(['finetune', '--json', '--from', '1', '--data', labeled, '--epochs', '1', '--batch', '16', '--recipe', 'official', '--no-baselines']); // run 2
});

/** An independent, minimal safetensors reader: header length, JSON header, offsets and dtypes checked. */
function readSafetensors(file: string) {
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] }
  >;
  delete header.__metadata__;
  const data = buf.subarray(8 + n);
  const entries = Object.entries(header).sort((a, b) => a[1].data_offsets[0] - b[1].data_offsets[0]);
  let expectStart = 0;
  const tensors = new Map<string, { shape: number[]; v: Float32Array }>();
  for (const [name, e] of entries) {
    expect(e.dtype, name).toBe('F32');
    expect(e.data_offsets[0], `${name} starts where the previous ends`).toBe(expectStart);
    expect(e.data_offsets[1] - e.data_offsets[0]).toBe(4 * e.shape.reduce((a, b) => a * b, 1));
    expectStart = e.data_offsets[1];
    const v = new Float32Array(e.shape.reduce((a, b) => a * b, 1));
    for (let i = 0; i < v.length; i++) v[i] = data.readFloatLE(e.data_offsets[0] + 4 * i);
    tensors.set(name, { shape: e.shape, v });
  }
  expect(expectStart).toBe(data.length);
  return tensors;
}

/** A plain ViT forward in typed-array loops, from timm-named tensors: mean of the patch tokens after the last block. */
function plainFeatures(
  t: Map<string, { shape: number[]; v: Float32Array }>,
  img: { data: Uint8Array; width: number },
  heads: number,
): number[] {
  const get = (n: string) => t.get(n)!.v;
  const D = t.get('cls_token')!.shape[2]!;
  const p = t.get('patch_embed.proj.weight')!.shape[2]!;
  const g = img.width / p;
  const L = g * g;
  const T = L + 1;
  const mean = [0.485, 0.456, 0.406];
  const std = [0.229, 0.224, 0.225];
  const px = (y: number, x: number, c: number) => (img.data[(y * img.width + x) * 3 + c]! / 255 - mean[c]!) / std[c]!;
  let x = Array.from({ length: T }, () => new Float64Array(D));
  const pe = get('patch_embed.proj.weight');
  const pos = get('pos_embed');
  for (let d = 0; d < D; d++) x[0]![d] = get('cls_token')[d]! + pos[d]!;
  for (let n = 0; n < L; n++)
    for (let d = 0; d < D; d++) {
      let s = get('patch_embed.proj.bias')[d]!;
      for (let c = 0; c < 3; c++)
        for (let dy = 0; dy < p; dy++)
          for (let dx = 0; dx < p; dx++) s += pe[((d * 3 + c) * p + dy) * p + dx]! * px(Math.floor(n / g) * p + dy, (n % g) * p + dx, c);
      x[n + 1]![d] = s + pos[(n + 1) * D + d]!;
    }
  const ln = (v: Float64Array, w: Float32Array, b: Float32Array) => {
    const m = v.reduce((a, c) => a + c, 0) / v.length;
    const var_ = v.reduce((a, c) => a + (c - m) ** 2, 0) / v.length;
    return v.map((c, i) => ((c - m) / Math.sqrt(var_ + 1e-6)) * w[i]! + b[i]!);
  };
  const lin = (v: Float64Array, W: Float32Array, b: Float32Array) =>
    Float64Array.from({ length: b.length }, (_, o) => v.reduce((s, c, i) => s + c * W[o * v.length + i]!, b[o]!));
  const erf = (z: number) => {
    const s = Math.sign(z);
    const a = Math.abs(z);
    const u = 1 / (1 + 0.3275911 * a);
    return s * (1 - ((((1.061405429 * u - 1.453152027) * u + 1.421413741) * u - 0.284496736) * u + 0.254829592) * u * Math.exp(-a * a));
  };
  for (let i = 0; t.has(`blocks.${i}.norm1.weight`); i++) {
    const k = (n: string) => get(`blocks.${i}.${n}`);
    const qkv = x.map((v) => lin(ln(v, k('norm1.weight'), k('norm1.bias')), k('attn.qkv.weight'), k('attn.qkv.bias')));
    const hd = D / heads;
    const attended = x.map(() => new Float64Array(D));
    for (let h = 0; h < heads; h++)
      for (let q = 0; q < T; q++) {
        const s = Array.from({ length: T }, (_, j) => {
          let dot = 0;
          for (let e = 0; e < hd; e++) dot += qkv[q]![h * hd + e]! * qkv[j]![D + h * hd + e]!;
          return dot / Math.sqrt(hd);
        });
        const mx = Math.max(...s);
        const ex = s.map((v) => Math.exp(v - mx));
        const z = ex.reduce((a, b) => a + b, 0);
        for (let j = 0; j < T; j++) for (let e = 0; e < hd; e++) attended[q]![h * hd + e]! += (ex[j]! / z) * qkv[j]![2 * D + h * hd + e]!;
      }
    x = x.map((v, q) => v.map((c, d) => c + lin(attended[q]!, k('attn.proj.weight'), k('attn.proj.bias'))[d]!));
    x = x.map((v) => {
      const h = lin(ln(v, k('norm2.weight'), k('norm2.bias')), k('mlp.fc1.weight'), k('mlp.fc1.bias')).map(
        (c) => 0.5 * c * (1 + erf(c / Math.SQRT2)),
      );
      const o = lin(h, k('mlp.fc2.weight'), k('mlp.fc2.bias'));
      return v.map((c, d) => c + o[d]!);
    });
  }
  return Array.from({ length: D }, (_, d) => x.slice(1).reduce((s, v) => s + v[d]!, 0) / L);
}

describe('export', () => {
  test('safetensors: timm keys and layouts, no decoders; a plain forward from the file gives the app’s features', async () => {
    const out = join(dir, 'st');
    run(['export', '1', '--format', 'safetensors', '--out', out]);
    const t = readSafetensors(join(out, 'model.safetensors'));
    const shapes = Object.fromEntries([...t].map(([n, v]) => [n, v.shape]));
    expect(shapes).toMatchObject({
      cls_token: [1, 1, 32],
      pos_embed: [1, 17, 32],
      'patch_embed.proj.weight': [32, 3, 8, 8],
      'patch_embed.proj.bias': [32],
    });
    expect(shapes['blocks.2.attn.qkv.weight']).toEqual([96, 32]);
    expect(shapes['blocks.2.mlp.fc1.weight']).toEqual([128, 32]);
    expect([...t.keys()].filter((n) => /^(decoder|norm\.|hog_enc|fc_norm|head)/.test(n))).toEqual([]);
    expect(t.size).toBe(4 + 4 * 12);
    const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
    expect(cfg.model_args).toMatchObject({ img_size: 32, patch_size: 8, embed_dim: 32, depth: 4, num_heads: 2, global_pool: 'avg' });
    expect(readFileSync(join(out, 'README.md'), 'utf8')).toMatch(/content sha256 [0-9a-f]{64}[\s\S]*licence[\s\S]*timm\.create_model/);

    // The image as the app sees it: the one evaluation transform (shorter side to 32/0.875, centre crop).
    const { data, width } = await evalImage(image, 32);
    const ours = features('1');
    const plain = plainFeatures(t, { data, width }, 2);
    plain.forEach((v, d) => expect(Math.abs(v - ours[d]!), `feature ${d}`).toBeLessThan(1e-4));
  });

  test('a fine-tuned run exports fc_norm and head too', () => {
    const out = join(dir, 'ft');
    run(['export', '2', '--out', out]);
    const t = readSafetensors(join(out, 'model.safetensors'));
    expect(t.get('head.weight')!.shape).toEqual([2, 32]);
    expect(t.has('fc_norm.weight')).toBe(true);
    expect(JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'))).toMatchObject({ num_classes: 2, label_names: ['coffee', 'rocket'] });
  });

  test('round trip: export, import, identical features', () => {
    const out = join(dir, 'rt');
    run(['export', '1', '--out', out]);
    const { runId } = JSON.parse(run(['import', join(out, 'model.safetensors'), '--json'])) as { runId: number };
    expect(features(String(runId))).toEqual(features('1'));
  });

  test('tfjs: model.json + weights load with tf.loadLayersModel and give the same features', async () => {
    const out = join(dir, 'tfjs');
    run(['export', '2', '--format', 'tfjs', '--out', out]);
    const json = JSON.parse(readFileSync(join(out, 'model.json'), 'utf8'));
    const weights = readFileSync(join(out, 'weights.bin'));
    const model = await tf.loadLayersModel(
      tf.io.fromMemory({
        modelTopology: json.modelTopology,
        weightSpecs: json.weightsManifest[0].weights,
        weightData: weights.buffer.slice(weights.byteOffset, weights.byteOffset + weights.length),
      }),
    );
    const { data } = await evalImage(image, 32);
    const mean = [0.485, 0.456, 0.406];
    const std = [0.229, 0.224, 0.225];
    const x = tf.tensor4d(
      Float32Array.from(data, (u, i) => (u / 255 - mean[i % 3]!) / std[i % 3]!),
      [1, 32, 32, 3],
    );
    const [f, logits] = model.predict(x) as tf.Tensor[];
    const got = Array.from(f!.dataSync());
    features('2').forEach((v, d) => expect(Math.abs(v - got[d]!), `feature ${d}`).toBeLessThan(1e-4));
    expect(logits!.shape).toEqual([1, 2]);
    tf.dispose([x, f!, logits!]);
    model.dispose();
  });

  test('localmim analyze --json: maps, NMI and KL for every block, gradient norms for a pretraining run', () => {
    const out = JSON.parse(run(['analyze', '1', '--image', image, '--query', '5', '--json'])) as {
      query: number;
      layers: { block: number; nmi: number; kl: number; mean: number[]; heads: number[][] }[];
      gradNorms: number[];
    };
    expect(out.query).toBe(5);
    expect(out.layers.map((l) => l.block)).toEqual([0, 1, 2, 3]);
    for (const l of out.layers) expect(l.mean.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 5);
    expect(out.gradNorms).toHaveLength(4);
    expect(out.gradNorms.every((g) => g > 0)).toBe(true);
  });

  test('localmim analyze --data --images --json, and the API: NMI, KL and gradient norms over a seeded set of images', async () => {
    const set = join(dir, 'set');
    mkdirSync(set);
    for (const f of readdirSync(SAMPLE_IMAGES).filter((f) => /^coffee-0[0-5]/.test(f))) symlinkSync(join(SAMPLE_IMAGES, f), join(set, f));
    type Stat = { mean: number; std: number; min: number; q1: number; median: number; q3: number; max: number; values: number[] };
    type Out = {
      runId: number;
      images: { root: string; requested: number; used: number; seed: number; paths: string[] };
      layers: { block: number; nmi: Stat; kl: Stat }[];
      gradNorms: Stat[];
    };
    const analyze = (...more: string[]) => {
      const r = localmim(['analyze', '1', '--data', set, '--json', '--home', home, ...more]);
      expect(r.code, r.stderr).toBe(0);
      return { out: JSON.parse(r.stdout) as Out, stderr: r.stderr };
    };
    const { out } = analyze('--images', '3', '--seed', '4');
    expect(out.images).toMatchObject({ requested: 3, used: 3, seed: 4 });
    expect(out.images.paths).toHaveLength(3);
    expect(analyze('--images', '3', '--seed', '4').out.images.paths).toEqual(out.images.paths);
    expect(out.layers.map((l) => l.block)).toEqual([0, 1, 2, 3]);
    expect(out.gradNorms).toHaveLength(4);
    for (const s of [...out.layers.flatMap((l) => [l.nmi, l.kl]), ...out.gradNorms]) {
      expect(Object.keys(s).sort()).toEqual(['max', 'mean', 'median', 'min', 'q1', 'q3', 'std', 'values']);
      expect(s.values).toHaveLength(3);
      expect(s.min).toBeLessThanOrEqual(s.q1);
      expect(s.q1).toBeLessThanOrEqual(s.median);
      expect(s.median).toBeLessThanOrEqual(s.q3);
      expect(s.q3).toBeLessThanOrEqual(s.max);
    }
    // values[i] is the per-image analysis of paths[i].
    const single = JSON.parse(run(['analyze', '1', '--image', join(set, out.images.paths[1]!), '--json'])) as {
      layers: { nmi: number; kl: number }[];
    };
    out.layers.forEach((l, b) => {
      expect(l.nmi.values[1]).toBeCloseTo(single.layers[b]!.nmi, 5);
      expect(l.kl.values[1]).toBeCloseTo(single.layers[b]!.kl, 4);
    });
    // More images asked than the folder has: all of them, said on stderr.
    const all = analyze();
    expect(all.out.images).toMatchObject({ requested: 64, used: 6 });
    expect(all.stderr).toMatch(/--images 64: .* has 6 usable images; using all of them/);

    // The app's API answers the same on the folder the CLI indexed.
    const service = new Service(home, () => launchNodeJob());
    const datasetId = service.store.dataset(realpathSync(set))!.id;
    const api = (await service.call('analysis.set', { runId: 1, datasetId, images: 3, seed: 4 })) as Out & { taps: number[] };
    expect(api.images).toEqual(out.images);
    expect(api.taps).toEqual([0, 1, 2, 3]);
    api.layers.forEach((l, b) => l.nmi.values.forEach((v, i) => expect(v).toBeCloseTo(out.layers[b]!.nmi.values[i]!, 6)));
    api.gradNorms.forEach((g, b) => expect(g.mean).toBeCloseTo(out.gradNorms[b]!.mean, 6));
    await expect(service.call('analysis.set', { runId: 1, datasetId, images: 0 })).rejects.toThrow(/analysis.set: images/);
    await service.shutdown();
  });
});

describe('a run whose decoders differ from the defaults (18 bins, as ViT-L)', () => {
  const model = { D: 32, depth: 4, heads: 2, imgSize: 32, patchSize: 8, taps: [0, 1, 2, 3], nbins: 18, hogBias: true };
  const decoders = { decoderDim: 24, decoderHeads: 3, decoderDepth: 2 };
  const pretrain = (name: string, m: object, extra: string[] = []) => {
    const file = join(dir, `${name}.json`);
    writeFileSync(file, JSON.stringify({ model: m, optim: { epochs: 1, batch: 8 } }));
    const events = run(['pretrain', '--json', '--config', file, '--max-steps', '1', ...extra])
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { type: string; runId: number; path?: string });
    return { runId: String(events[0]!.runId), checkpoint: events.find((e) => e.type === 'checkpoint')!.path! };
  };

  test('export keeps only the backbone; its import and the run itself start new runs with other decoders', async () => {
    const source = pretrain('bins18', { ...model, ...decoders });
    const out = join(dir, 'bins18');
    run(['export', source.runId, '--out', out]);
    const t = readSafetensors(join(out, 'model.safetensors'));
    expect([...t.keys()].filter((n) => !/^(cls_token|pos_embed|patch_embed\.|blocks\.)/.test(n))).toEqual([]);
    expect(t.size).toBe(4 + 4 * 12);
    run(['export', source.runId, '--format', 'tfjs', '--out', `${out}-tfjs`]);
    expect(readdirSync(`${out}-tfjs`).sort()).toEqual(['README.md', 'config.json', 'model.json', 'weights.bin']);

    // Imported weights carry no decoders of their own; a run from them or from the source builds its own.
    const { runId: imported } = JSON.parse(run(['import', join(out, 'model.safetensors'), '--json'])) as { runId: number };
    const fromImport = pretrain('from-import', { ...model, ...decoders }, ['--init', String(imported)]);
    const fromSource = pretrain('from-source', { ...model, nbins: 9, decoderDim: 16, decoderHeads: 2 }, ['--init', source.runId]);
    const { loadCheckpoint } = await import('../core/train/checkpoint.js');
    expect(loadCheckpoint(fromImport.checkpoint).tensors.get('decoder.3.pred.1.weight')!.shape).toEqual([54, 24, 1, 1]);
    expect(loadCheckpoint(fromSource.checkpoint).tensors.get('decoder.3.pred.1.weight')!.shape).toEqual([27, 16, 1, 1]);
  });
});

/**
 * PyTorch's `interpolate(mode='bicubic', align_corners=False)` (no antialias) of each channel of the `g × g` grid
 * of a `[1 + g², D]` table, written out directly: 16 clamped taps per output, Keys' kernel with a = −0.75.
 */
function referenceBicubic(table: Float32Array, D: number, g: number, G: number): Float64Array {
  const a = -0.75;
  const K = (d: number) => {
    const x = Math.abs(d);
    if (x <= 1) return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1;
    return x < 2 ? a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a : 0;
  };
  const clamp = (i: number) => Math.min(Math.max(i, 0), g - 1);
  const out = new Float64Array(G * G * D);
  for (let Y = 0; Y < G; Y++)
    for (let X = 0; X < G; X++) {
      const [sy, sx] = [((Y + 0.5) * g) / G - 0.5, ((X + 0.5) * g) / G - 0.5];
      for (let j = Math.floor(sy) - 1; j <= Math.floor(sy) + 2; j++)
        for (let i = Math.floor(sx) - 1; i <= Math.floor(sx) + 2; i++) {
          const w = K(sy - j) * K(sx - i);
          for (let c = 0; c < D; c++) out[(Y * G + X) * D + c]! += w * table[(1 + clamp(j) * g + clamp(i)) * D + c]!;
        }
    }
  return out;
}

describe('import resizes the position table to another grid', () => {
  test('as PyTorch: [[1, 2], [3, 4]] to 4×4 starts 0.6836, 1.0156, 1.5625, 1.8945', () => {
    const out = resizePosEmbed(Float32Array.of(7, 1, 2, 3, 4), 1, 2, 4);
    expect(out[0]).toBe(7); // the class row is kept
    [0.6836, 1.0156, 1.5625, 1.8945].forEach((v, i) => expect(out[1 + i]).toBeCloseTo(v, 4));
    expect(out[16]).toBeCloseTo(4.3164, 4);
  });

  const imported = new Map<string, number>();
  const source = () => {
    const out = join(dir, 'pos-source');
    run(['export', '1', '--out', out]);
    return readSafetensors(join(out, 'model.safetensors'));
  };

  test.each([
    [14, 7],
    [7, 14],
    [6, 10],
  ])('a table on a %i² grid imported on a %i² grid equals the bicubic reference; features as timm’s forward', async (g, G) => {
    // Run 1's weights (D 32, patch 8) with a random table of g×g positions, its class row non-zero.
    const t = source();
    const rng = new Rng(g * 100 + G);
    const table = Float32Array.from({ length: (1 + g * g) * 32 }, () => rng.normal());
    t.set('pos_embed', { shape: [1, 1 + g * g, 32], v: table });
    const file = join(dir, `pos-${g}.safetensors`);
    writeFileSync(file, encodeSafetensors(new Map([...t].map(([n, x]) => [n, { shape: x.shape, values: x.v }]))));
    const { runId, model } = JSON.parse(run(['import', file, '--img', String(8 * G), '--heads', '2', '--json'])) as {
      runId: number;
      model: { imgSize: number };
    };
    expect(model.imgSize).toBe(8 * G);
    imported.set(`${g}-${G}`, runId);
    const out = join(dir, `pos-${g}-${G}`);
    run(['export', String(runId), '--out', out]);
    const got = readSafetensors(join(out, 'model.safetensors'));
    expect(got.get('pos_embed')!.shape).toEqual([1, 1 + G * G, 32]);
    const pos = got.get('pos_embed')!.v;
    const want = referenceBicubic(table, 32, g, G);
    want.forEach((v, i) => expect(Math.abs(pos[32 + i]! - v), `pos_embed[${1 + Math.floor(i / 32)}, ${i % 32}]`).toBeLessThan(1e-5));
    // The class row went into cls_token: the same sums reach the blocks.
    expect(Array.from(pos.subarray(0, 32))).toEqual(new Array(32).fill(0));
    const cls = t.get('cls_token')!.v;
    got.get('cls_token')!.v.forEach((v, c) => expect(v).toBeCloseTo(cls[c]! + table[c]!, 6));

    const resized = new Map(t);
    resized.set('pos_embed', { shape: [1, 1 + G * G, 32], v: Float32Array.of(...table.subarray(0, 32), ...want) });
    const img = await evalImage(image, 8 * G);
    const plain = plainFeatures(resized, { data: img.data, width: img.width }, 2);
    const ours = features(String(runId));
    plain.forEach((v, d) => expect(Math.abs(v - ours[d]!), `feature ${d}`).toBeLessThan(1e-4));
  });

  test('a fine-tuned run exports the table it trained from the resized one, not sin-cos', () => {
    const table = readSafetensors(join(dir, 'pos-14-7', 'model.safetensors')).get('pos_embed')!.v;
    const events = run([
      'finetune',
      '--json',
      '--from',
      String(imported.get('14-7')),
      '--data',
      join(dir, 'labeled'),
      '--epochs',
      '1',
      '--batch',
      '16',
      '--recipe',
      'official',
      '--no-baselines',
    ]);
    const runId = (JSON.parse(events.split('\n')[0]!) as { runId: number }).runId;
    const out = join(dir, 'pos-finetuned');
    run(['export', String(runId), '--out', out]);
    const exported = readSafetensors(join(out, 'model.safetensors')).get('pos_embed')!.v;
    const store = new Store(join(home, 'localmim.db'));
    const last = loadCheckpoint(store.checkpoints(runId).at(-1)!.path).tensors.get('pos_embed')!.values;
    store.close();
    expect(Array.from(exported)).toEqual(Array.from(last));
    const moved = Math.max(...exported.map((v, i) => Math.abs(v - table[i]!)));
    expect(moved).toBeGreaterThan(0); // fine-tuning trains the positions, as timm's ViT
    expect(moved).toBeLessThan(0.05); // starting from the resized table
    expect(Array.from(exported)).not.toEqual(Array.from(sinCosPosEmbed(32, 7)));
  });

  test('an image size that is not a multiple of the patch size is refused naming it', () => {
    const r = localmim(['import', join(dir, 'pos-14.safetensors'), '--img', '60', '--heads', '2', '--home', home]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/pos-14\.safetensors: imgSize 60 must be a multiple of its patch size 8/);
  });
});
