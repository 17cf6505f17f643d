import * as tf from '@tensorflow/tfjs';
import type { LocalMIM } from '../model/localmim.js';
import { Rng } from '../random.js';
import type { RgbImage } from '../targets/image.js';

/** L2 norm of the pretraining loss's gradient on each encoder block's parameters (paper Fig. 5). */
export function blockGradientNorms(model: LocalMIM, images: RgbImage[], seed = 0): number[] {
  const batch = model.prepare(images, new Rng(seed).fill(images.length * model.dims.L));
  const vars = [...model.params.vars].filter(([name]) => name.startsWith('blocks.'));
  const { value, grads } = tf.variableGrads(
    () => model.forward(batch).loss,
    vars.map(([, v]) => v),
  );
  const norms = Array.from({ length: model.dims.depth }, (_, i) => {
    const mine = vars.filter(([name]) => name.startsWith(`blocks.${i}.`)).map(([, v]) => grads[v.name]!);
    return mine.length ? Math.sqrt(tf.tidy(() => tf.addN(mine.map((g) => tf.sum(tf.square(g)))).dataSync()[0]!)) : 0;
  });
  tf.dispose([value, ...Object.values(grads)]);
  return norms;
}
