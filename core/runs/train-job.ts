import type { ProbeSet } from '../analysis/knn.js';
import type { DataItem } from '../data/loader.js';
import type { Engine } from '../engine.js';
import type { Cadence, TrainEvent } from '../train/loop.js';
import type { RunSpec } from './spec.js';

export type LabeledItem = DataItem & { label: number };

/** Everything a training process needs, validated by `prepare` and claimed by `begin`: it touches no database. */
export interface TrainJob {
  kind: 'train';
  runId: number;
  home: string;
  spec: Extract<RunSpec, { kind: 'pretrain' | 'finetune' }>;
  /** Pretraining: every usable image. Fine-tuning: the labeled split. */
  data: { items: DataItem[] } | { train: LabeledItem[]; val: LabeledItem[] };
  /** A checkpoint whose weights a new run starts from (pretraining `--init`, or the run a fine-tune starts from). */
  initFrom?: string;
  resumeFrom?: string;
  cadence: Cadence;
  stopAtStep?: number;
  /** Render reconstruction previews every this many steps (pretraining); none when absent. */
  previewEvery?: number;
  /** Pretraining: the labeled probe set the kNN monitor scores the backbone on. */
  probe?: ProbeSet;
  backend: string;
  /** What trains it (default tfjs, on `backend`); the torch engine runs core/torch/train.py with `torch`'s options. */
  engine?: Engine;
  torch?: TorchOptions;
}

/** Runtime options of the torch engine (they change speed, not what is computed, except `amp`). */
export interface TorchOptions {
  /** bf16 autocast on CUDA (off by default, for exactness). */
  amp?: boolean;
  /** torch.compile, where torch has it. */
  compile?: boolean;
  /** Data-loading worker processes (default: a few on a GPU, none on the CPU). */
  workers?: number;
}

export interface JobHooks {
  signal?: AbortSignal;
  onEvent: (e: TrainEvent) => void;
  onPreview?: (step: number) => void;
  /** Something went wrong that does not stop training (e.g. a preview could not be written). */
  warn: (message: string) => void;
  /** What the job does next, where it takes a while (a baseline). */
  info?: (message: string) => void;
}
