import * as tf from '@tensorflow/tfjs';

/**
 * Gradient accumulation over `n` micro-batches, as the official loop: each micro-batch's loss is divided by n (not its
 * gradients) and the gradients are summed. Alongside, it sums what each micro-batch reports for the log, also divided by n.
 */
export class GradientAccumulator {
  private grads: tf.NamedTensorMap = {};
  private reported: tf.Tensor | undefined;

  constructor(
    private readonly vars: tf.Variable[],
    private readonly n: number,
  ) {}

  /** Adds one micro-batch: `loss` returns its loss, or `[loss, report]` to report other values (per-scale losses) than the loss. */
  add(loss: () => tf.Scalar | [tf.Scalar, tf.Tensor]): void {
    let report: tf.Tensor | undefined;
    const { value, grads } = tf.variableGrads(() => {
      const out = loss();
      const [l, r] = Array.isArray(out) ? out : [out];
      if (r) report = tf.keep(tf.div(r, this.n));
      return tf.div(l, this.n) as tf.Scalar;
    }, this.vars);
    if (report) value.dispose();
    else report = value;
    const sum = tf.add(this.reported ?? 0, report);
    tf.dispose([report, ...(this.reported ? [this.reported] : [])]);
    this.reported = sum;
    const acc = this.grads;
    this.grads = tf.tidy(() => Object.fromEntries(Object.entries(grads).map(([k, g]) => [k, acc[k] ? tf.add(acc[k], g) : tf.clone(g)])));
    tf.dispose([...Object.values(acc), ...Object.values(grads)]);
  }

  /** The summed gradients, keyed by tfjs variable name as `tf.variableGrads` returns them, and reports; the caller disposes both. */
  result(): { grads: tf.NamedTensorMap; reported: tf.Tensor } {
    return { grads: this.grads, reported: this.reported! };
  }
}
