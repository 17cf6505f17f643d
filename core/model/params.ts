import * as tf from '@tensorflow/tfjs';
import { modelDims, modelFamily, swinDims, type ModelConfig } from '../config.js';
import { Rng } from '../random.js';
import { sinCosPosEmbed } from './posEmbed.js';

/**
 * A parameter by its official state-dict name (docs/method.md#parameter-names), in the official PyTorch layout:
 * Linear `[out, in]`, Conv2d `[out, in, kh, kw]`, ConvTranspose2d `[in, out, kh, kw]`.
 */
export interface ParamSpec {
  name: string;
  shape: number[];
  init: (rng: Rng, n: number) => Float32Array;
  /** A running statistic (a probe's BatchNorm): state that training moves without gradients. */
  running?: boolean;
}

/** The classifier's head: `classes` outputs, and MAE's linear-probe head (BatchNorm, then the Linear) when `probe`. */
export interface HeadSpec {
  classes: number;
  probe: boolean;
}

const fill = (v: number) => (_: Rng, n: number) => new Float32Array(n).fill(v);
const draw = (f: (rng: Rng) => number) => (rng: Rng, n: number) => {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = f(rng);
  return out;
};
const uniform = (bound: number) => draw((rng) => rng.uniform(-bound, bound));
const normal = (std: number) => draw((rng) => std * rng.normal());
// Xavier-uniform for every Linear and for the patch embedding viewed as a [D, 3p²] matrix, as MAE does.
const xavier = (fanOut: number, fanIn: number) => uniform(Math.sqrt(6 / (fanIn + fanOut)));

/** Adders of named parameters with the official initialisations of each module kind. */
function specBuilder(mlpRatio: number) {
  const out: ParamSpec[] = [];
  const add = (name: string, shape: number[], init: ParamSpec['init'], running?: boolean) => out.push({ name, shape, init, running });
  const linear = (name: string, o: number, i: number, bias = true) => {
    add(`${name}.weight`, [o, i], xavier(o, i));
    if (bias) add(`${name}.bias`, [o], fill(0));
  };
  const norm = (name: string, n: number) => {
    add(`${name}.weight`, [n], fill(1));
    add(`${name}.bias`, [n], fill(0));
  };
  const mlp = (name: string, W: number) => {
    linear(`${name}.fc1`, mlpRatio * W, W);
    linear(`${name}.fc2`, W, mlpRatio * W);
  };
  const block = (name: string, W: number) => {
    norm(`${name}.norm1`, W);
    linear(`${name}.attn.qkv`, 3 * W, W);
    linear(`${name}.attn.proj`, W, W);
    norm(`${name}.norm2`, W);
    mlp(`${name}.mlp`, W);
  };
  return { out, add, linear, norm, mlp, block };
}

/**
 * Parameters of the pretraining model, or, with `head`, of the fine-tuning classifier: the same backbone (timm names)
 * plus `fc_norm` and `head` on mean-pooled patch tokens, as the official fine-tuning (docs/method.md#fine-tuning), or
 * MAE's probe head `head.0` (BatchNorm without affine) and `head.1` (docs/method.md#linear-probe).
 */
function specs(c: ModelConfig, head?: HeadSpec): ParamSpec[] {
  if (modelFamily(c) === 'swin') return swinSpecs(c, head);
  const { D, depth, p, g, scales, F } = modelDims(c);
  const d = c.decoderDim;
  const { out, add, linear, norm, block } = specBuilder(c.mlpRatio);
  // Heads keep PyTorch's conv defaults, U(±1/√fan_in); a transposed conv [in, out, k, k] has fan_in = out·k².
  // MAE's predictor (the global variant's) is a Linear: Xavier weight, zero bias.
  const conv1x1 = (name: string, o: number, i: number) => {
    const mae = c.variant === 'global';
    add(`${name}.weight`, [o, i, 1, 1], mae ? xavier(o, i) : uniform(1 / Math.sqrt(i)));
    add(`${name}.bias`, [o], mae ? fill(0) : uniform(1 / Math.sqrt(i)));
  };
  const deconv = (name: string, i: number, o: number) => {
    add(`${name}.weight`, [i, o, 2, 2], uniform(1 / Math.sqrt(o * 4)));
    add(`${name}.bias`, [o], uniform(1 / Math.sqrt(o * 4)));
  };

  add('cls_token', [1, 1, D], normal(0.02));
  // Fine-tuning trains the positions, as timm's ViT: from scratch they start as its trunc_normal_(std 0.02), whose
  // ±2 cut is 100σ away, so a plain normal; from a pretrained run, as its sin-cos table.
  if (head) add('pos_embed', [1, 1 + g * g, D], normal(0.02));
  add('patch_embed.proj.weight', [D, 3, p, p], xavier(D, 3 * p * p));
  add('patch_embed.proj.bias', [D], uniform(1 / Math.sqrt(3 * p * p)));
  for (let i = 0; i < depth; i++) block(`blocks.${i}`, D);
  if (head?.probe) {
    norm('fc_norm', D);
    add('head.0.running_mean', [D], fill(0), true);
    add('head.0.running_var', [D], fill(1), true);
    // MAE's probe: trunc-normal std 0.01 (timm's cut at ±2 never bites at that std), zero bias.
    add('head.1.weight', [head.classes, D], normal(0.01));
    add('head.1.bias', [head.classes], fill(0));
    return out;
  }
  if (head) {
    norm('fc_norm', D);
    // The official fine-tuning initialises the new head with a truncated normal of std 2e-5.
    add('head.weight', [head.classes, D], normal(2e-5));
    add('head.bias', [head.classes], fill(0));
    return out;
  }
  scales.forEach((_, k) => norm(`norm.${k}`, D));
  scales.forEach((s, k) => {
    const dec = `decoder.${k}`;
    add(`${dec}.mask_token`, [1, 1, d], normal(0.02));
    linear(`${dec}.embed`, d, D);
    for (let i = 0; i < c.decoderDepth; i++) block(`${dec}.blocks.${i}`, d);
    norm(`${dec}.norm`, d);
    const head = HEADS[s]!(d);
    for (const layer of head) {
      const name = `${dec}.pred.${layer.index}`;
      if (layer.kind === 'deconv') deconv(name, layer.cin, layer.cout);
      else if (layer.kind === 'norm') norm(name, layer.cin);
      else if (layer.kind === 'conv') conv1x1(name, F[k]!, layer.cin);
    }
  });
  return out;
}

/**
 * Parameters of Swin LocalMIM (docs/method.md#swin), named as the official `MaskedAutoencoderSwin` without its `encoder.`
 * prefix: the backbone (timm's names; the patch merging at the end of stage i is `layers.i.downsample`), one latent
 * norm and one decoder per stage.
 */
function swinSpecs(c: ModelConfig, head?: HeadSpec): ParamSpec[] {
  if (head) return swinClassifierSpecs(c, head);
  const d = swinDims(c);
  const { out, add, linear, norm, block } = specBuilder(c.mlpRatio);
  swinBackbone(c, { add, linear, norm });
  d.outWidths.forEach((W, k) => norm(`norm.${k}`, W));
  d.outWidths.forEach((W, k) => {
    const dec = `decoder.${k}`;
    const dk = d.decoderDims[k]!;
    linear(`${dec}.embed`, dk, W);
    add(`${dec}.mask_token`, [1, 1, dk], normal(0.02));
    for (let i = 0; i < c.decoderDepth; i++) block(`${dec}.blocks.${i}`, dk);
    norm(`${dec}.norm`, dk);
    linear(`${dec}.pred`, d.F[k]!, dk);
  });
  return out;
}

/**
 * The Swin fine-tuning classifier (docs/method.md#swin-fine-tuning), named as the official `models_swin.py`: the backbone,
 * the final `norm` and `head`, initialised as there (truncated-normal std 0.02 Linears and bias tables, PyTorch's default
 * patch conv) and the new head as the official fine-tuning re-initialises it (std 2e-5). No linear probe: the official
 * Swin code has none.
 */
function swinClassifierSpecs(c: ModelConfig, head: HeadSpec): ParamSpec[] {
  if (head.probe) throw new Error("a linear probe is MAE's ViT protocol; the official Swin code has none");
  const d = swinDims(c);
  const b = specBuilder(c.mlpRatio);
  const conv = uniform(1 / Math.sqrt(3 * d.p * d.p));
  const add: typeof b.add = (name, shape, init) => b.add(name, shape, name === 'patch_embed.proj.weight' ? conv : init);
  const linear = (name: string, o: number, i: number, bias = true) => {
    add(`${name}.weight`, [o, i], normal(0.02)); // timm's trunc_normal_(std .02): its ±2 cut is 100σ away
    if (bias) add(`${name}.bias`, [o], fill(0));
  };
  swinBackbone(c, { add, linear, norm: b.norm });
  const W = d.widths.at(-1)!;
  b.norm('norm', W);
  add('head.weight', [head.classes, W], normal(2e-5));
  add('head.bias', [head.classes], fill(0));
  return b.out;
}

/** The Swin backbone's parameters, in the official initialisation: Xavier Linears and patch conv, N(0, 0.02) bias tables. */
export function swinBackbone(c: ModelConfig, b: Pick<ReturnType<typeof specBuilder>, 'add' | 'linear' | 'norm'>): void {
  const d = swinDims(c);
  const { add, linear, norm } = b;
  const C = d.C;
  add('patch_embed.proj.weight', [C, 3, d.p, d.p], xavier(C, 3 * d.p * d.p));
  // The conv's bias is left to PyTorch's default init, U(±1/√fan_in).
  add('patch_embed.proj.bias', [C], uniform(1 / Math.sqrt(3 * d.p * d.p)));
  norm('patch_embed.norm', C);
  d.widths.forEach((W, i) => {
    const w = d.windows[i]!;
    for (let j = 0; j < d.depths[i]!; j++) {
      const blk = `layers.${i}.blocks.${j}`;
      norm(`${blk}.norm1`, W);
      add(`${blk}.attn.relative_position_bias_table`, [(2 * w - 1) ** 2, d.heads[i]!], normal(0.02));
      linear(`${blk}.attn.qkv`, 3 * W, W);
      linear(`${blk}.attn.proj`, W, W);
      norm(`${blk}.norm2`, W);
      linear(`${blk}.mlp.fc1`, c.mlpRatio * W, W);
      linear(`${blk}.mlp.fc2`, W, c.mlpRatio * W);
    }
    if (i === d.widths.length - 1) return;
    linear(`layers.${i}.downsample.reduction`, 2 * W, 4 * W, false);
    norm(`layers.${i}.downsample.norm`, 4 * W);
  });
}

/** The rescaling head of each scale (docs/method.md#decoders-and-scales), with the official `pred.k` module indices. */
export type HeadLayer = { index: number; kind: 'deconv' | 'norm' | 'gelu' | 'pool' | 'conv'; cin: number; cout: number };
export const HEADS: Record<number, (d: number) => HeadLayer[]> = {
  4: (d) => [
    { index: 0, kind: 'deconv', cin: d, cout: d / 2 },
    { index: 1, kind: 'norm', cin: d / 2, cout: d / 2 },
    { index: 2, kind: 'gelu', cin: d / 2, cout: d / 2 },
    { index: 3, kind: 'deconv', cin: d / 2, cout: d / 4 },
    { index: 4, kind: 'conv', cin: d / 4, cout: 0 },
  ],
  2: (d) => [
    { index: 0, kind: 'deconv', cin: d, cout: d / 2 },
    { index: 1, kind: 'conv', cin: d / 2, cout: 0 },
  ],
  1: (d) => [{ index: 0, kind: 'conv', cin: d, cout: 0 }],
  0.5: (d) => [
    { index: 0, kind: 'pool', cin: d, cout: d },
    { index: 1, kind: 'conv', cin: d, cout: 0 },
  ],
};

/** Frozen tensors of the pretraining state dict: sin-cos tables and the HOG layers' Sobel kernels (and biases). */
function bufferValues(c: ModelConfig, rng: Rng): Map<string, { shape: number[]; values: Float32Array }> {
  const out = new Map<string, { shape: number[]; values: Float32Array }>();
  let scales: unknown[];
  if (modelFamily(c) === 'swin') {
    // Swin's decoders have no class token: their tables are the sin-cos rows of each stage's grid.
    const d = swinDims(c);
    scales = d.outGrids;
    d.outGrids.forEach((g, k) => {
      const W = d.decoderDims[k]!;
      out.set(`decoder.${k}.pos_embed`, { shape: [1, g * g, W], values: sinCosPosEmbed(W, g).subarray(W) });
    });
  } else {
    const { D, g } = modelDims(c);
    scales = modelDims(c).scales;
    out.set('pos_embed', { shape: [1, 1 + g * g, D], values: sinCosPosEmbed(D, g) });
    scales.forEach((_, k) =>
      out.set(`decoder.${k}.pos_embed`, { shape: [1, 1 + g * g, c.decoderDim], values: sinCosPosEmbed(c.decoderDim, g) }),
    );
  }
  if (c.target !== 'hog') return out;
  const sobel = Float32Array.of(1, 0, -1, 2, 0, -2, 1, 0, -1, 1, 2, 1, 0, 0, 0, -1, -2, -1);
  scales.forEach((_, k) => {
    out.set(`hog_enc.${k}.conv.weight`, { shape: [2, 1, 3, 3], values: sobel });
    // The official bias keeps PyTorch's default conv init U(±1/3) (fan-in 9) and is frozen (docs/method.md#hog-bias).
    if (c.hogBias) out.set(`hog_enc.${k}.conv.bias`, { shape: [2], values: uniform(1 / 3)(rng, 2) });
  });
  return out;
}

/** Whether AdamW decays a parameter: not 1-D tensors nor biases (timm `add_weight_decay`, docs/method.md#optimizer-and-schedule). */
export const decays = (name: string, shape: readonly number[]) => shape.length > 1 && !name.endsWith('.bias');

/** Swin's rule (official `run_pretrain.py`): also none for names with `position_bias` or `token` (bias tables, mask tokens). */
export const swinDecays = (name: string, shape: readonly number[]) =>
  decays(name, shape) && !name.includes('position_bias') && !name.includes('token');

/** The model's state: trainable variables, running statistics and frozen buffers, all keyed by official name. */
export class ParamStore {
  private static instances = 0;
  readonly vars = new Map<string, tf.Variable>();
  /** Variables that training moves without gradients: a probe's BatchNorm statistics. */
  readonly stats = new Map<string, tf.Variable>();
  readonly buffers = new Map<string, tf.Tensor>();

  constructor(c: ModelConfig, seed: number, head?: HeadSpec) {
    const rng = new Rng(seed);
    // tfjs variable names are global: prefix them so that several models can live side by side.
    const prefix = `m${ParamStore.instances++}/`;
    for (const s of specs(c, head)) {
      const n = s.shape.reduce((a, b) => a * b, 1);
      (s.running ? this.stats : this.vars).set(
        s.name,
        tf.tidy(() => tf.variable(tf.tensor(s.init(rng, n), s.shape), !s.running, prefix + s.name)),
      );
    }
    for (const [name, b] of head ? [] : bufferValues(c, rng)) {
      this.buffers.set(name, tf.keep(tf.tensor(b.values, b.shape)));
    }
  }

  get(name: string): tf.Tensor {
    const t = this.vars.get(name) ?? this.stats.get(name) ?? this.buffers.get(name);
    if (!t) throw new Error(`model has no parameter named ${name}`);
    return t;
  }

  /** Every tensor of the state dict, by official name. */
  entries(): [string, tf.Tensor][] {
    return [...this.vars, ...this.stats, ...this.buffers];
  }

  /** Overwrites named tensors (shapes must match); unknown names are an error, missing ones are kept. */
  assign(values: ReadonlyMap<string, Float32Array>): void {
    for (const [name, v] of values) {
      const t = this.get(name);
      if (v.length !== t.size) throw new Error(`${name}: expected ${t.size} values for shape [${t.shape}], got ${v.length}`);
      const next = tf.tensor(v, t.shape);
      if (t instanceof tf.Variable) {
        t.assign(next);
        next.dispose();
      } else {
        t.dispose();
        this.buffers.set(name, tf.keep(next));
      }
    }
  }

  dispose(): void {
    for (const [, t] of this.entries()) t.dispose();
    this.vars.clear();
    this.stats.clear();
    this.buffers.clear();
  }
}
