import * as tf from '@tensorflow/tfjs';
import type { Optimizer } from './optimizer.js';

/**
 * LARS as MAE's linear probe uses it (util/lars.py, from MoCo v3; docs/method.md#linear-probe). A parameter with more
 * than one dimension adds weight decay to its gradient, `g ← g + wd·p`, and scales it by the trust ratio
 * `η·‖p‖ / ‖g‖` (1 when either norm is 0); biases and other 1-D tensors take their plain gradient. Then momentum:
 * `μ ← m·μ + g`, `p ← p − lr·μ`.
 */
export class LARS implements Optimizer {
  step = 0;
  readonly mu = new Map<string, tf.Variable>();
  readonly slots = { mu: this.mu };

  constructor(
    private readonly vars: ReadonlyMap<string, tf.Variable>,
    private readonly o: { weightDecay: number; momentum: number; trust: number },
  ) {
    for (const [name, p] of vars)
      this.mu.set(
        name,
        tf.tidy(() => tf.variable(tf.zerosLike(p), false)),
      );
  }

  apply(grads: tf.NamedTensorMap, lr: number): void {
    const { weightDecay, momentum, trust } = this.o;
    this.step += 1;
    tf.tidy(() => {
      for (const [name, p] of this.vars) {
        let g = grads[p.name];
        if (!g) continue;
        if (p.rank > 1) {
          g = tf.add(g, tf.mul(p, weightDecay));
          const [pNorm, gNorm] = [tf.norm(p), tf.norm(g)];
          const both = tf.logicalAnd(tf.greater(pNorm, 0), tf.greater(gNorm, 0));
          g = tf.mul(g, tf.where(both, tf.div(tf.mul(pNorm, trust), gNorm), tf.onesLike(pNorm)));
        }
        const mu = this.mu.get(name)!;
        mu.assign(tf.add(tf.mul(mu, momentum), g));
        p.assign(tf.sub(p, tf.mul(mu, lr)));
      }
    });
  }

  dispose(): void {
    for (const t of this.mu.values()) t.dispose();
  }
}
