import * as tf from '@tensorflow/tfjs';
import { parseRunConfig } from '../config.js';
import { disposeBatch, LocalMIM } from '../model/localmim.js';
import { Rng } from '../random.js';
import type { RunRow } from '../store/store.js';
import type { RgbImage } from '../targets/image.js';
import type { LoadedCheckpoint } from '../train/checkpoint.js';

/** L2 norm of the pretraining loss's gradient on each encoder block's parameters (paper Fig. 5). */
export async function blockGradientNorms(model: LocalMIM, images: RgbImage[], seed = 0): Promise<number[]> {
  const batch = model.prepare(images, new Rng(seed).fill(images.length * model.dims.L));
  const vars = [...model.params.vars].filter(([name]) => name.startsWith('blocks.'));
  const { value, grads } = tf.variableGrads(
    () => model.forward(batch).loss,
    vars.map(([, v]) => v),
  );
  const squares = tf.tidy(() =>
    Array.from({ length: model.dims.depth }, (_, i) => {
      const mine = vars.filter(([name]) => name.startsWith(`blocks.${i}.`)).map(([, v]) => tf.sum(tf.square(grads[v.name]!)));
      return mine.length ? tf.addN(mine) : tf.scalar(0);
    }),
  );
  const norms = await Promise.all(squares.map(async (s) => Math.sqrt((await s.data())[0]!)));
  tf.dispose([value, ...Object.values(grads), ...squares]);
  disposeBatch(batch);
  return norms;
}

/** A pretraining run's whole model, decoders included, as the checkpoint holds it: what the loss needs. */
export function lossModelOf(run: RunRow, checkpoint: LoadedCheckpoint): LocalMIM {
  const model = new LocalMIM(parseRunConfig(run.config).model, 0);
  model.params.assign(new Map([...checkpoint.tensors].filter(([n]) => !n.startsWith('optimizer.')).map(([n, t]) => [n, t.values])));
  return model;
}
