import * as tf from '@tensorflow/tfjs';
import { modelFamily, swinDims, type ModelConfig } from '../config.js';
import { Rng } from '../random.js';
import { swinClassifierParams, vitClassifierParams } from './classifier.js';
import { localMimParams } from './localmim.js';
import { decayed, size, specsOf } from './module.js';
import { swinLocalMimParams } from './swin-localmim.js';

/** The classifier's head: `classes` outputs, and MAE's linear-probe head (BatchNorm, then the Linear) when `probe`. */
export interface HeadSpec {
  classes: number;
  probe: boolean;
}

/** The declared tensors of a config's pretraining model, or, with `head`, of its fine-tuning classifier. */
export function modelParams(c: ModelConfig, head?: HeadSpec): object {
  if (modelFamily(c) === 'vit') return head ? vitClassifierParams(c, head) : localMimParams(c);
  if (head?.probe) throw new Error("a linear probe is MAE's ViT protocol; the official Swin code has none");
  return head ? swinClassifierParams(swinDims(c), head.classes) : swinLocalMimParams(c);
}

/** The model's state: trainable variables, running statistics and frozen buffers, all keyed by official name. */
export class ParamStore {
  private static instances = 0;
  readonly vars = new Map<string, tf.Variable>();
  /** Variables that training moves without gradients: a probe's BatchNorm statistics. */
  readonly stats = new Map<string, tf.Variable>();
  readonly buffers = new Map<string, tf.Tensor>();
  private readonly decaying = new Set<string>();

  /** Initialised as declared, in declaration order from one generator seeded `seed`: variables first, then buffers. */
  constructor(c: ModelConfig, seed: number, head?: HeadSpec) {
    const rng = new Rng(seed);
    // tfjs variable names are global: prefix them so that several models can live side by side.
    const prefix = `m${ParamStore.instances++}/`;
    const specs = specsOf(modelParams(c, head));
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
