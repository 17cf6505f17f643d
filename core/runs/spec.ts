import { z } from 'zod';
import {
  FinetuneRunSchema,
  ModelConfigSchema,
  parseConfig,
  RunConfigSchema,
  type FinetuneRun,
  type ModelConfig,
  type RunConfig,
} from '../config.js';
import type { RunRow } from '../store/store.js';

/** A run's config, typed by its kind: what it trains, and how. */
export type RunSpec =
  { kind: 'pretrain'; config: RunConfig } | { kind: 'finetune'; config: FinetuneRun } | { kind: 'import'; config: { model: ModelConfig } };

const ImportedSchema = z.strictObject({ model: ModelConfigSchema });

/** The run's stored config, parsed by the schema of its kind; an error names the run. */
export function specOf(run: Pick<RunRow, 'id' | 'kind' | 'config'>): RunSpec {
  const where = `run ${run.id}`;
  if (run.kind === 'finetune') return { kind: 'finetune', config: parseConfig(FinetuneRunSchema, run.config, where) };
  if (run.kind === 'import') return { kind: 'import', config: parseConfig(ImportedSchema, run.config, where) };
  return { kind: 'pretrain', config: parseConfig(RunConfigSchema, run.config, where) };
}

/** Epochs, batch and schedule: `optim` in pretraining, `finetune` in fine-tuning. */
export function optimOf(s: RunSpec) {
  if (s.kind === 'import') throw new Error('imported weights have no training schedule');
  return s.kind === 'pretrain' ? s.config.optim : s.config.finetune;
}

/** The same run, `epochs` longer: the kind and everything else stay. */
export function extended(s: RunSpec, epochs: number): RunSpec {
  if (s.kind === 'pretrain') return { ...s, config: { ...s.config, optim: { ...s.config.optim, epochs: s.config.optim.epochs + epochs } } };
  if (s.kind === 'finetune')
    return { ...s, config: { ...s.config, finetune: { ...s.config.finetune, epochs: s.config.finetune.epochs + epochs } } };
  throw new Error('imported weights cannot be trained longer: fine-tune them, or pretrain from them');
}
