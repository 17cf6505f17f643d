import * as tf from '@tensorflow/tfjs';
import { Rng } from '../random.js';
import { layerNorm, linear } from './ops.js';

// Each model part declares its tensors once, beside its forward, as a tree of plain objects (PyTorch's modules):
// `declare` names every tensor by its path, as a state dict does (`blocks.0.attn.qkv.weight`), and the forward reads
// them through the same fields once `resolve`d into tensors. The parameter store, counts, export checks and
// weight-decay groups all walk that tree.

/** Reads a tensor of the state dict by official name: a `ParamStore`'s, or an exported file's. */
export type Param = (name: string) => tf.Tensor;

export type Init = (rng: Rng, n: number) => Float32Array;

/**
 * One declared tensor: official state-dict name (docs/method.md#parameter-names), PyTorch layout (Linear `[out, in]`,
 * Conv2d `[out, in, kh, kw]`, ConvTranspose2d `[in, out, kh, kw]`), official initialisation, and what it is: trained,
 * a running statistic (moved by training without gradients: a probe's BatchNorm), or a frozen buffer.
 */
export interface ParamSpec {
  name: string;
  readonly shape: readonly number[];
  readonly init: Init;
  readonly kind: 'param' | 'running' | 'buffer';
  /** Whether AdamW decays it, where a model's official groups differ from timm's rule (`decays`). */
  readonly decay?: boolean;
}

/** timm's `add_weight_decay` rule: no decay on 1-D tensors nor biases (docs/method.md#optimizer-and-schedule). */
export const decays = (name: string, shape: readonly number[]) => shape.length > 1 && !name.endsWith('.bias');
/** Whether AdamW decays a declared tensor. */
export const decayed = (s: ParamSpec) => s.kind === 'param' && (s.decay ?? decays(s.name, s.shape));

export const param = (shape: number[], init: Init, decay?: boolean): ParamSpec => ({ name: '', shape, init, kind: 'param', decay });
export const running = (shape: number[], init: Init): ParamSpec => ({ name: '', shape, init, kind: 'running' });
export const buffer = (shape: number[], init: Init): ParamSpec => ({ name: '', shape, init, kind: 'buffer' });

export const fill = (v: number) => (_: Rng, n: number) => new Float32Array(n).fill(v);
const draw = (f: (rng: Rng) => number) => (rng: Rng, n: number) => {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = f(rng);
  return out;
};
export const uniform = (bound: number) => draw((rng) => rng.uniform(-bound, bound));
/** A normal of this std; timm's trunc_normal_ at the stds used here is the same, as its ±2 cut is ≥ 100σ away. */
export const normal = (std: number) => draw((rng) => std * rng.normal());
/** Xavier-uniform, as MAE initialises every Linear (and the patch conv viewed as a `[D, 3p²]` matrix). */
export const xavier = (fanOut: number, fanIn: number): Init => uniform(Math.sqrt(6 / (fanIn + fanOut)));
/** A Linear's weight initialisation from its `[out, in]`. */
export type WeightInit = (fanOut: number, fanIn: number) => Init;
/** timm's `_init_weights` for every Linear: trunc_normal_(std .02), as the official fine-tuning models start from scratch. */
export const timmLinear: WeightInit = () => normal(0.02);
/** PyTorch's default Conv2d init for weight and bias, kaiming_uniform_(a=√5) and its bias rule: U(±1/√fan_in). */
export const torchConv = (fanIn: number) => uniform(1 / Math.sqrt(fanIn));

const isSpec = (v: object): v is ParamSpec => 'init' in v && 'shape' in v;

/** Names every tensor of a module tree by its path (arrays index as `nn.ModuleList`); fields that are not objects are skipped. */
export function declare<M extends object>(m: M, prefix = ''): M {
  for (const [k, v] of Object.entries(m)) {
    if (v === null || typeof v !== 'object') continue;
    if (isSpec(v)) v.name = prefix + k;
    else declare(v, `${prefix}${k}.`);
  }
  return m;
}

/** A declared tree with its tensors in place: what a forward reads, `m.attn.qkv.weight`. */
export type Tensors<M> = M extends ParamSpec
  ? tf.Tensor
  : M extends readonly (infer E)[]
    ? Tensors<E>[]
    : M extends object
      ? { [K in keyof M]: Tensors<M[K]> }
      : M;

/** A declared tree's tensors read through `P`, once per forward pass (inside its `tf.tidy` where `P` makes tensors). */
export function resolve<M extends object>(m: M, P: Param): Tensors<M> {
  const at = (v: unknown): unknown => {
    if (v === null || typeof v !== 'object') return v;
    if (isSpec(v)) return P(v.name);
    return Array.isArray(v) ? v.map(at) : Object.fromEntries(Object.entries(v).map(([k, x]) => [k, at(x)]));
  };
  return at(m) as Tensors<M>;
}

/** A declared tree's tensors in declaration order, as PyTorch's `state_dict()`. */
export function specsOf(m: object): ParamSpec[] {
  return Object.values(m).flatMap((v) => (v === null || typeof v !== 'object' ? [] : isSpec(v) ? [v] : specsOf(v)));
}

export const size = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/** Trained parameters of a module, counted from its declaration. */
export const count = (m: object) => specsOf(m).reduce((n, s) => n + (s.kind === 'param' ? size(s.shape) : 0), 0);

export const range = <T>(n: number, f: (i: number) => T): T[] => Array.from({ length: n }, (_, i) => f(i));

export interface LinearParams {
  weight: ParamSpec;
  bias?: ParamSpec;
}
export interface NormParams {
  weight: ParamSpec;
  bias: ParamSpec;
}

/** `nn.Linear(i, o)`: weight `[o, i]` (Xavier unless given), zero bias. */
export const linearParams = (o: number, i: number, init: Init = xavier(o, i), bias = true): LinearParams => ({
  weight: param([o, i], init),
  bias: bias ? param([o], fill(0)) : undefined,
});
/** `nn.LayerNorm(n)`: ones and zeros. */
export const normParams = (n: number): NormParams => ({ weight: param([n], fill(1)), bias: param([n], fill(0)) });

export type Linear = Tensors<LinearParams>;
export type Norm = Tensors<NormParams>;

/** A Linear on `x [N, in]`. */
export const dense = (m: Linear, x: tf.Tensor) => linear(x, m.weight, m.bias);
/** A LayerNorm over the last axis of x. */
export const norm = (m: Norm, x: tf.Tensor, eps?: number) => layerNorm(x, m.weight, m.bias, eps);

/** The model's state: trainable variables, running statistics and frozen buffers, all keyed by official name. */
export class ParamStore {
  private static instances = 0;
  readonly vars = new Map<string, tf.Variable>();
  /** Variables that training moves without gradients: a probe's BatchNorm statistics. */
  readonly stats = new Map<string, tf.Variable>();
  readonly buffers = new Map<string, tf.Tensor>();
  private readonly decaying = new Set<string>();

  /** A module tree's tensors, initialised as declared in declaration order from one generator seeded `seed`: variables first, then buffers. */
  constructor(declared: object, seed: number) {
    const rng = new Rng(seed);
    // tfjs variable names are global: prefix them so that several models can live side by side.
    const prefix = `m${ParamStore.instances++}/`;
    const specs = specsOf(declared);
    for (const s of [...specs.filter((s) => s.kind !== 'buffer'), ...specs.filter((s) => s.kind === 'buffer')]) {
      const values = s.init(rng, size(s.shape));
      if (s.kind === 'buffer') this.buffers.set(s.name, tf.keep(tf.tensor(values, [...s.shape])));
      else
        (s.kind === 'running' ? this.stats : this.vars).set(
          s.name,
          tf.tidy(() => tf.variable(tf.tensor(values, [...s.shape]), s.kind === 'param', prefix + s.name)),
        );
      if (decayed(s)) this.decaying.add(s.name);
    }
  }

  /** Whether AdamW decays a variable, as its declaration says (AdamW's groups pass the shape too; the name is enough). */
  readonly decays = (name: string, _shape?: readonly number[]) => this.decaying.has(name);

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
