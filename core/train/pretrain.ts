import { modelFamily, type ModelConfig, type RunConfig } from '../config.js';
import type { Loader } from '../data/loader.js';
import { LocalMIM } from '../model/localmim.js';
import type { PretrainModel } from '../model/pretraining.js';
import { SwinLocalMIM } from '../model/swin-localmim.js';
import { Rng, seedFor, STREAMS } from '../random.js';
import type { Task } from './loop.js';
import { TrainStep } from './step.js';

/**
 * LocalMIM pretraining as a task of the training loop: the mask of micro-batch `a` of step `s` is a
 * function of (seed, s, a), so a resumed run masks exactly as the uninterrupted one.
 */
export function pretrainTask(cfg: RunConfig, loader: Loader, init?: ReadonlyMap<string, Float32Array>): Task & { model: PretrainModel } {
  const { optim, seed } = cfg;
  const model = pretrainModel(cfg.model, seed);
  const trainer = new TrainStep(model, optim);
  // An earlier or imported backbone: its tensors replace the initial ones; decoders start fresh.
  if (init) model.params.assign(init);
  return {
    model,
    optimizer: trainer.optimizer,
    config: cfg,
    optim,
    summary: { family: modelFamily(cfg.model), targets: model.targetShapes() },
    batchesPerEpoch: loader.batchesPerEpoch,
    async step(epoch, j, step, lr) {
      const micro = await Promise.all(Array.from({ length: optim.accumIter }, (_, a) => loader.get(epoch, j * optim.accumIter + a)));
      const batches = micro.map((images, a) =>
        model.prepare(images, new Rng(seedFor(seed, STREAMS.mask, step, a)).fill(model.noiseSize(images.length))),
      );
      try {
        return trainer.run(batches, lr);
      } finally {
        batches.forEach((b) => model.disposeBatch(b));
      }
    },
    dispose() {
      trainer.dispose();
      model.dispose();
    },
  };
}

/** The pretraining model of a config's family: LocalMIM on a ViT or on a Swin. */
export function pretrainModel(c: ModelConfig, seed: number): PretrainModel {
  return modelFamily(c) === 'swin' ? new SwinLocalMIM(c, seed) : new LocalMIM(c, seed);
}
