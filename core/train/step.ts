import * as tf from '@tensorflow/tfjs';
import type { OptimConfig } from '../config.js';
import type { LocalMIM, PreparedBatch } from '../model/localmim.js';
import { AdamW } from './adamw.js';

export interface StepResult {
  /** Total loss averaged over the accumulated micro-batches, and the same per scale. */
  loss: number;
  losses: number[];
  lr: number;
}

export class NonFiniteLossError extends Error {
  constructor(
    readonly step: number,
    readonly losses: number[],
  ) {
    super(
      `loss is not finite at optimizer step ${step} (per-scale losses ${losses.join(', ')}); stopped, weights kept from the last good step`,
    );
    this.name = 'NonFiniteLossError';
  }
}

/** `acc + g` per variable, disposing both inputs: gradient accumulation over micro-batches. */
export function accumulate(acc: tf.NamedTensorMap, g: tf.NamedTensorMap): tf.NamedTensorMap {
  const sum = tf.tidy(() =>
    Object.fromEntries(Object.entries(g).map(([name, t]) => [name, acc[name] ? tf.add(acc[name], t) : tf.clone(t)])),
  );
  tf.dispose([...Object.values(acc), ...Object.values(g)]);
  return sum;
}

/** Forward, losses, backward and AdamW for one optimizer step over `accumIter` micro-batches. */
export class TrainStep {
  readonly optimizer: AdamW;

  constructor(
    readonly model: LocalMIM,
    o: OptimConfig,
  ) {
    this.optimizer = new AdamW(model.params.vars, o);
  }

  /** Gradients of the mean loss over the micro-batches, and the per-scale losses; the caller disposes the grads. */
  async gradients(batches: PreparedBatch[]): Promise<{ grads: tf.NamedTensorMap; losses: number[] }> {
    const vars = [...this.model.params.vars.values()];
    let grads: tf.NamedTensorMap = {};
    const losses = new Array<number>(this.model.dims.scales.length).fill(0);
    for (const batch of batches) {
      let scaleLosses: tf.Scalar[] = [];
      const { value, grads: g } = tf.variableGrads(() => {
        const out = this.model.forward(batch);
        scaleLosses = out.losses.map((l) => tf.keep(l));
        // Accumulation divides the loss, not the gradients, as the official loop does.
        return tf.div(out.loss, batches.length) as tf.Scalar;
      }, vars);
      // Read asynchronously: a GPU backend cannot be read synchronously in Node.
      const values = await Promise.all(scaleLosses.map((l) => l.data()));
      values.forEach((v, k) => (losses[k]! += v[0]! / batches.length));
      tf.dispose([value, ...scaleLosses]);
      grads = accumulate(grads, g);
    }
    return { grads, losses };
  }

  /** One optimizer step at learning rate `lr`; throws {@link NonFiniteLossError} before touching the weights. */
  async run(batches: PreparedBatch[], lr: number): Promise<StepResult> {
    const { grads, losses } = await this.gradients(batches);
    const loss = losses.reduce((a, b) => a + b, 0);
    if (!Number.isFinite(loss)) {
      tf.dispose(Object.values(grads));
      throw new NonFiniteLossError(this.optimizer.step + 1, losses);
    }
    this.optimizer.apply(grads, lr);
    tf.dispose(Object.values(grads));
    return { loss, losses, lr };
  }

  dispose(): void {
    this.optimizer.dispose();
  }
}
