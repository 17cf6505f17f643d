import * as tf from '@tensorflow/tfjs';
import type { OptimConfig } from '../config.js';
import type { PretrainBatch, PretrainModel } from '../model/localmim.js';
import { AdamW } from './adamw.js';

/** `acc + g` per variable, disposing both inputs: gradient accumulation over micro-batches. */
export function accumulate(acc: tf.NamedTensorMap, g: tf.NamedTensorMap): tf.NamedTensorMap {
  const sum = tf.tidy(() =>
    Object.fromEntries(Object.entries(g).map(([name, t]) => [name, acc[name] ? tf.add(acc[name], t) : tf.clone(t)])),
  );
  tf.dispose([...Object.values(acc), ...Object.values(g)]);
  return sum;
}

/** Forward, losses, backward and AdamW for one optimizer step over `accumIter` micro-batches, all on the device. */
export class TrainStep<Batch extends PretrainBatch = PretrainBatch> {
  readonly optimizer: AdamW;

  constructor(
    readonly model: PretrainModel<Batch>,
    o: OptimConfig,
  ) {
    this.optimizer = new AdamW(model.params.vars, o, { decays: model.decays });
  }

  /** Gradients of the mean loss over the micro-batches, and the per-scale losses `[scales]`; the caller disposes both. */
  gradients(batches: Batch[]): { grads: tf.NamedTensorMap; losses: tf.Tensor1D } {
    const vars = [...this.model.params.vars.values()];
    let grads: tf.NamedTensorMap = {};
    let losses = tf.zeros([this.model.cells.length]) as tf.Tensor1D;
    for (const batch of batches) {
      let scaleLosses: tf.Tensor1D | undefined;
      const { value, grads: g } = tf.variableGrads(() => {
        const out = this.model.forward(batch);
        scaleLosses = tf.keep(tf.div(tf.stack(out.losses), batches.length) as tf.Tensor1D);
        // Accumulation divides the loss, not the gradients, as the official loop does.
        return tf.div(out.loss, batches.length) as tf.Scalar;
      }, vars);
      const sum = tf.add(losses, scaleLosses!) as tf.Tensor1D;
      tf.dispose([value, losses, scaleLosses!]);
      losses = sum;
      grads = accumulate(grads, g);
    }
    return { grads, losses };
  }

  /** One optimizer step at learning rate `lr`. Returns `[loss, ...per-scale losses]` on the device, unread. */
  run(batches: Batch[], lr: number): tf.Tensor1D {
    const { grads, losses } = this.gradients(batches);
    this.optimizer.apply(grads, lr);
    const out = tf.tidy(() => tf.concat([tf.reshape(tf.sum(losses), [1]), losses]) as tf.Tensor1D);
    tf.dispose([...Object.values(grads), losses]);
    return out;
  }

  dispose(): void {
    this.optimizer.dispose();
  }
}
