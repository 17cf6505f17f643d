import { modelFamily, swinDims, type ModelConfig } from '../config.js';
import { swinClassifierParams, vitClassifierParams, type HeadSpec } from './classifier.js';
import { localMimParams } from './localmim.js';
import { ParamStore } from './module.js';
import { swinLocalMimParams } from './swin-localmim.js';

/** The declared tensors of a config's pretraining model, or, with `head`, of its fine-tuning classifier. */
export function modelParams(c: ModelConfig, head?: HeadSpec): object {
  if (modelFamily(c) === 'vit') return head ? vitClassifierParams(c, head) : localMimParams(c);
  if (head?.probe) throw new Error("a linear probe is MAE's ViT protocol; the official Swin code has none");
  return head ? swinClassifierParams(swinDims(c), head.classes, head.scratch) : swinLocalMimParams(c);
}

/** A config's model state, initialised as declared (exports and tests; the models build theirs from their own declaration). */
export const paramStore = (c: ModelConfig, seed: number, head?: HeadSpec) => new ParamStore(modelParams(c, head), seed);
