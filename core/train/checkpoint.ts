import * as tf from '@tensorflow/tfjs';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { assertRoom, writeAtomic } from '../atomic.js';
import { decodeSafetensors, encodeSafetensors, type NamedTensor } from '../safetensors.js';
import type { ParamStore } from '../model/module.js';
import type { Optimizer } from './optimizer.js';

/** Where training stands: enough, with the weights and moments, to continue exactly. */
export interface TrainState {
  /** Optimizer steps done. */
  step: number;
  /** Fractional epoch reached. */
  epoch: number;
  /** Mean loss of the steps since the previous checkpoint. */
  loss: number | null;
  /** The run's config (a RunConfig, or a FinetuneRun for fine-tuning), parsed by whoever resumes. */
  config: unknown;
  /**
   * The steps since the previous checkpoint, as their `step` events reported them: a checkpoint whose recording was
   * lost (its writer's service died) brings its history with it. Absent in older and torch checkpoints.
   */
  steps?: StepRecord[];
}

/** One optimizer step as the loop reports it (its `step` event). */
export interface StepRecord {
  step: number;
  epoch: number;
  samples: number;
  loss: number;
  losses: number[];
  lr: number;
  imagesPerS: number;
}

/**
 * Writes model weights (official names), the optimizer's state (`optimizer.<slot>.<name>`) and the training state as one safetensors file,
 * atomically (writeAtomic). A disk without room for it is a NoRoomError, before anything is written.
 */
export async function saveCheckpoint(
  path: string,
  model: { params: ParamStore },
  optimizer: Pick<Optimizer, 'step' | 'slots'>,
  state: TrainState,
): Promise<{ size: number; hash: string }> {
  const named: [string, tf.Tensor][] = [...model.params.entries()];
  for (const [slot, state] of Object.entries(optimizer.slots)) for (const [name, t] of state) named.push([`optimizer.${slot}.${name}`, t]);
  const values = await Promise.all(named.map(([, t]) => t.data() as Promise<Float32Array>));
  const tensors = new Map<string, NamedTensor>(named.map(([name, t], i) => [name, { shape: t.shape, values: values[i]! }]));
  const bytes = encodeSafetensors(tensors, {
    format: 'localmim-checkpoint',
    version: '1',
    optimizer_step: String(optimizer.step),
    state: JSON.stringify(state),
  });
  assertRoom(path, bytes.length);
  writeAtomic(path, bytes);
  return { size: bytes.length, hash: createHash('sha256').update(bytes).digest('hex') };
}

export interface LoadedCheckpoint {
  state: TrainState;
  optimizerStep: number;
  tensors: Map<string, NamedTensor>;
  hash: string;
  size: number;
}

export function loadCheckpoint(path: string): LoadedCheckpoint {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (err) {
    throw new Error(`${path}: cannot read checkpoint (${(err as NodeJS.ErrnoException).code})`);
  }
  const { tensors, metadata } = decodeSafetensors(bytes, path);
  if (metadata.format !== 'localmim-checkpoint' || !metadata.state) throw new Error(`${path}: not a LocalMIM checkpoint`);
  return {
    state: JSON.parse(metadata.state) as TrainState,
    optimizerStep: Number(metadata.optimizer_step),
    tensors,
    hash: createHash('sha256').update(bytes).digest('hex'),
    size: bytes.length,
  };
}

/** Puts a checkpoint's weights and optimizer state into a freshly built model and optimizer. */
export function restoreCheckpoint(ckpt: LoadedCheckpoint, model: { params: ParamStore }, optimizer: Optimizer): void {
  model.params.assign(new Map([...ckpt.tensors].filter(([n]) => !n.startsWith('optimizer.')).map(([n, t]) => [n, t.values])));
  for (const [key, { values }] of ckpt.tensors) {
    if (!key.startsWith('optimizer.')) continue;
    const [, slot, ...rest] = key.split('.');
    const name = rest.join('.');
    const target = Object.hasOwn(optimizer.slots, slot!) ? optimizer.slots[slot!]!.get(name) : undefined;
    if (!target) throw new Error(`checkpoint has optimizer state ${slot} for ${name}, which this run's optimizer does not keep`);
    const t = tf.tensor(values, target.shape);
    target.assign(t);
    t.dispose();
  }
  optimizer.step = ckpt.optimizerStep;
}
