import * as tf from '@tensorflow/tfjs';
import type { OptimConfig } from '../config.js';
import { decays } from '../model/params.js';

/** PyTorch's AdamW (decoupled weight decay, bias-corrected moments), with timm's no-decay rule (spec §13). */
export class AdamW {
  step = 0;
  readonly m = new Map<string, tf.Variable>();
  readonly v = new Map<string, tf.Variable>();

  constructor(
    private readonly vars: ReadonlyMap<string, tf.Variable>,
    private readonly o: OptimConfig,
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
        const decayed = decays(name, p.shape) && weightDecay > 0 ? tf.mul(p, 1 - lr * weightDecay) : p;
        const denom = tf.add(tf.div(tf.sqrt(v), Math.sqrt(bc2)), eps);
        p.assign(tf.sub(decayed, tf.mul(tf.div(m, denom), lr / bc1)));
      }
    });
  }

  dispose(): void {
    for (const t of [...this.m.values(), ...this.v.values()]) t.dispose();
  }
}
