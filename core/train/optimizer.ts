import type * as tf from '@tensorflow/tfjs';

/** What the training loop and checkpoints need of an optimizer (AdamW in pretraining and fine-tuning, LARS in a linear probe). */
export interface Optimizer {
  /** Optimizer steps taken. */
  step: number;
  /** Per-parameter state by PyTorch's state name (AdamW: exp_avg, exp_avg_sq; LARS: mu), then parameter name; checkpointed. */
  readonly slots: Readonly<Record<string, ReadonlyMap<string, tf.Variable>>>;
  /** `grads` are keyed by tfjs variable name, as `tf.variableGrads` returns them. */
  apply(grads: tf.NamedTensorMap, lr: number): void;
  dispose(): void;
}
