import * as tf from '@tensorflow/tfjs';
import { expect } from 'vitest';
import { parseRunConfig } from '../../core/config.js';
import { disposeBatch, LocalMIM } from '../../core/model/localmim.js';
import { formulaValues, goldenImage, readGolden, worstExcess } from './golden.js';

interface ForwardTiny {
  image: { height?: number; width?: number; pixels_u8_hwc: number[] };
  param_init: { parameters: { name: string; shape: number[]; requires_grad: boolean }[] };
  masking: { noise: number[]; ids_keep: number[]; mask: number[] };
  outputs: {
    latent_cls_first8: number[][];
    preds: number[][];
    targets: number[][];
    scale_masks: number[][];
    per_scale_loss: number[];
    total_loss: number;
  };
}

export const golden = readGolden<ForwardTiny>('forward_tiny.json');
export const tinyConfig = parseRunConfig({
  model: { imgSize: 64, patchSize: 16, D: 64, depth: 8, heads: 4, decoderDim: 32, decoderHeads: 4, nbins: 9 },
}).model;

/** The official code's forward on the golden image and mask, on whichever backend runs: predictions, targets, masks, losses. */
export async function expectForwardMatchesOfficial(): Promise<void> {
  const model = new LocalMIM(tinyConfig, 0);
  const official = golden.param_init.parameters;
  model.params.assign(new Map(official.filter((p) => p.requires_grad).map((p) => [p.name, formulaValues(p.name, p.shape)])));
  const batch = model.prepare([goldenImage({ height: 64, width: 64, ...golden.image })], Float32Array.from(golden.masking.noise));
  expect([...batch.idsKeep]).toEqual(golden.masking.ids_keep);
  expect([...batch.mask]).toEqual(golden.masking.mask);

  const out = tf.tidy(() => model.forward(batch));
  // Read asynchronously: a GPU backend cannot be read synchronously in Node.
  const read = (t: tf.Tensor) => t.data() as Promise<Float32Array>;
  const [latents, preds, losses, loss, targets, scaleMasks] = await Promise.all([
    Promise.all(out.latents.map(read)),
    Promise.all(out.preds.map(read)),
    Promise.all(out.losses.map(read)),
    read(out.loss),
    Promise.all(batch.targets.map(read)),
    Promise.all(batch.scaleMasks.map(read)),
  ]);
  tf.dispose(out);
  disposeBatch(batch);
  model.dispose();
  const o = golden.outputs;
  latents.forEach((z, k) => expect(worstExcess(z.subarray(0, 8), o.latent_cls_first8[k]!, () => 1e-4).excess).toBeLessThanOrEqual(0));
  preds.forEach((pred, k) => {
    const worst = worstExcess(pred, o.preds[k]!, () => 1e-4);
    expect(worst.excess, `scale ${k} index ${worst.index}`).toBeLessThanOrEqual(0);
    expect(worstExcess(targets[k]!, o.targets[k]!, () => 1e-4).excess).toBeLessThanOrEqual(0);
    expect([...scaleMasks[k]!]).toEqual(o.scale_masks[k]);
    expect(Math.abs(losses[k]![0]! / o.per_scale_loss[k]! - 1)).toBeLessThan(1e-5);
  });
  expect(Math.abs(loss[0]! / o.total_loss - 1)).toBeLessThan(1e-5);
}
