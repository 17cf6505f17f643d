import * as tf from '@tensorflow/tfjs';
import type { OptimConfig } from '../config.js';
import { decays } from '../model/module.js';
import { fusedAdamW, nativeOr, type AdamWHyper } from '../native.js';
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
        const rate = lr * (this.groups.lrScale?.(name) ?? 1);
        const decay = (this.groups.decays ?? decays)(name, p.shape) && weightDecay > 0 ? 1 - rate * weightDecay : 1;
        const h = { beta1, beta2, eps, decay, sqrtBc2: Math.sqrt(bc2), stepSize: rate / bc1 };
        const [p1, m1, v1] = nativeOr(fusedAdamW, adamwOps)(p, g, m, v, h);
        m.assign(m1!);
        v.assign(v1!);
        p.assign(p1!);
      }
    });
  }

  dispose(): void {
    for (const t of [...this.m.values(), ...this.v.values()]) t.dispose();
  }
}

/** The AdamW update in tfjs ops, as fusedAdamW computes it in one pass: `[p', m', v']`. */
function adamwOps(p: tf.Tensor, g: tf.Tensor, m: tf.Tensor, v: tf.Tensor, h: AdamWHyper): tf.Tensor[] {
  const m1 = tf.add(tf.mul(m, h.beta1), tf.mul(g, 1 - h.beta1));
  const v1 = tf.add(tf.mul(v, h.beta2), tf.mul(tf.square(g), 1 - h.beta2));
  const denom = tf.add(tf.div(tf.sqrt(v1), h.sqrtBc2), h.eps);
  return [tf.sub(h.decay === 1 ? p : tf.mul(p, h.decay), tf.mul(tf.div(m1, denom), h.stepSize)), m1, v1];
}
