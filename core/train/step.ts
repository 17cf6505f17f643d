import * as tf from '@tensorflow/tfjs';
import type { OptimConfig } from '../config.js';
import type { PretrainBatch, PretrainModel } from '../model/pretraining.js';
import { GradientAccumulator } from './accumulate.js';
import { AdamW } from './adamw.js';

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
    const acc = new GradientAccumulator([...this.model.params.vars.values()], batches.length);
    for (const batch of batches)
      acc.add(() => {
        const out = this.model.forward(batch);
        return [out.loss, tf.stack(out.losses)];
      });
    const { grads, reported: losses } = acc.result();
    return { grads, losses: losses as tf.Tensor1D };
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
