import * as tf from '@tensorflow/tfjs';
import { modelDims, modelFamily, parseRunConfig, swinDims, type ModelConfig } from '../config.js';
import type { PretrainModel } from '../model/pretraining.js';
import { Rng } from '../random.js';
import type { RunRow } from '../store/store.js';
import type { RgbImage } from '../image.js';
import type { LoadedCheckpoint } from '../train/checkpoint.js';
import { pretrainModel } from '../train/pretrain.js';

/** The name prefix of each encoder block in depth order: a ViT's `blocks.i.`, a Swin's `layers.i.blocks.j.` stage by stage. */
export function blockPrefixes(c: ModelConfig): string[] {
  if (modelFamily(c) === 'vit') return Array.from({ length: modelDims(c).depth }, (_, i) => `blocks.${i}.`);
  return swinDims(c).depths.flatMap((n, i) => Array.from({ length: n }, (_, j) => `layers.${i}.blocks.${j}.`));
}

/** L2 norm of the pretraining loss's gradient on each encoder block's parameters (paper Fig. 5), ViT or Swin, in depth order. */
export async function blockGradientNorms(model: PretrainModel, images: RgbImage[], seed = 0): Promise<number[]> {
  const batch = model.prepare(images, new Rng(seed).fill(model.noiseSize(images.length)));
  const prefixes = blockPrefixes(model.config);
  const vars = [...model.params.vars].filter(([name]) => prefixes.some((p) => name.startsWith(p)));
  const { value, grads } = tf.variableGrads(
    () => model.forward(batch).loss,
    vars.map(([, v]) => v),
  );
  const squares = tf.tidy(() =>
    prefixes.map((p) => {
      // A block past the last tap gets no gradient: its norm is 0.
      const mine = vars.filter(([name, v]) => name.startsWith(p) && grads[v.name]).map(([, v]) => tf.sum(tf.square(grads[v.name]!)));
      return mine.length ? tf.addN(mine) : tf.scalar(0);
    }),
  );
  const norms = await Promise.all(squares.map(async (s) => Math.sqrt((await s.data())[0]!)));
  tf.dispose([value, ...Object.values(grads), ...squares]);
  model.disposeBatch(batch);
  return norms;
}

/** A pretraining run's whole model, decoders included, as the checkpoint holds it: what the loss needs. */
export function lossModelOf(run: RunRow, checkpoint: LoadedCheckpoint): PretrainModel {
  const model = pretrainModel(parseRunConfig(run.config).model, 0);
  model.params.assign(new Map([...checkpoint.tensors].filter(([n]) => !n.startsWith('optimizer.')).map(([n, t]) => [n, t.values])));
  return model;
}
