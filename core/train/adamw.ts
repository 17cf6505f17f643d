import * as tf from '@tensorflow/tfjs';
import type { OptimConfig } from '../config.js';
import { decays } from '../model/params.js';
import type { Optimizer } from './optimizer.js';

export interface ParamGroups {
  /** Multiplier of the learning rate per parameter (layer-wise decay in fine-tuning). */
  lrScale?: (name: string) => number;
  /** Which parameters decay; default timm's rule: not 1-D tensors nor biases. */
  decays?: (name: string, shape: readonly number[]) => boolean;
}

/** PyTorch's AdamW (decoupled weight decay, bias-corrected moments), with timm's parameter groups (docs/method.md#optimizer-and-schedule). */
export class AdamW implements Optimizer {
  step = 0;
  readonly m = new Map<string, tf.Variable>();
  readonly v = new Map<string, tf.Variable>();
  readonly slots = { exp_avg: this.m, exp_avg_sq: this.v };

  constructor(
    private readonly vars: ReadonlyMap<string, tf.Variable>,
    private readonly o: OptimConfig,
    private readonly groups: ParamGroups = {},
  ) {
    for (const [name, p] of vars) {
      this.m.set(
        name,
        tf.tidy(() => tf.variable(tf.zerosLike(p), false)),
      );
      this.v.set(
        name,
        tf.tidy(() => tf.variable(tf.zerosLike(p), false)),
      );
    }
  }

  /** `grads` are keyed by tfjs variable name, as `tf.variableGrads` returns them. */
  apply(grads: tf.NamedTensorMap, lr: number): void {
    const { beta1, beta2, eps, weightDecay } = this.o;
    this.step += 1;
    const bc1 = 1 - beta1 ** this.step;
    const bc2 = 1 - beta2 ** this.step;
    tf.tidy(() => {
      for (const [name, p] of this.vars) {
        const g = grads[p.name];
        if (!g) continue;
        const m = this.m.get(name)!;
        const v = this.v.get(name)!;
        m.assign(tf.add(tf.mul(m, beta1), tf.mul(g, 1 - beta1)));
        v.assign(tf.add(tf.mul(v, beta2), tf.mul(tf.square(g), 1 - beta2)));
        const rate = lr * (this.groups.lrScale?.(name) ?? 1);
        const decayed = (this.groups.decays ?? decays)(name, p.shape) && weightDecay > 0 ? tf.mul(p, 1 - rate * weightDecay) : p;
        const denom = tf.add(tf.div(tf.sqrt(v), Math.sqrt(bc2)), eps);
        p.assign(tf.sub(decayed, tf.mul(tf.div(m, denom), rate / bc1)));
      }
    });
  }

  dispose(): void {
    for (const t of [...this.m.values(), ...this.v.values()]) t.dispose();
  }
}
