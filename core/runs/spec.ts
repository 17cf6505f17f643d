import { z } from 'zod';
import {
  ConfigError,
  ModelConfigSchema,
  parseConfig,
  ResumeOverridesSchema,
  RunConfigSchema,
  type ModelConfig,
  type ResumeOverrides,
  type RunConfig,
} from '../config.js';
import { FinetuneRunSchema, type FinetuneRun } from '../finetune-config.js';
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

const OVERRIDABLE = Object.keys(ResumeOverridesSchema.shape) as (keyof ResumeOverrides)[];

type Trainable = Extract<RunSpec, { kind: 'pretrain' | 'finetune' }>;

/** The same run with new schedule settings, parsed again by its kind's schema; a blr replaces an lr, and the reverse. */
export function withOverrides(s: Trainable, o: ResumeOverrides, where: string): Trainable {
  if (o.blr !== undefined && o.lr !== undefined) throw new ConfigError(['lr: give lr or blr, not both'], where);
  const given = Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));
  const optim = { ...optimOf(s), ...given, ...(o.blr !== undefined && { lr: undefined }) };
  if (s.kind === 'pretrain') return { kind: s.kind, config: parseConfig(RunConfigSchema, { ...s.config, optim }, where) };
  return { kind: s.kind, config: parseConfig(FinetuneRunSchema, { ...s.config, finetune: optim }, where) };
}

/** The overridable settings that differ: [before, after], null where unset. */
export function changesOf(before: Trainable, after: Trainable): Record<string, [unknown, unknown]> {
  const [a, b] = [optimOf(before), optimOf(after)];
  return Object.fromEntries(OVERRIDABLE.filter((k) => a[k] !== b[k]).map((k) => [k, [a[k] ?? null, b[k] ?? null]]));
}
