import { z } from 'zod';
import { int, MAX_EPOCHS, ModelConfigSchema, OptimConfigSchema } from './config.js';
import { parseRandAugment } from './data/randaugment.js';
import { OFFICIAL_AUGMENT, OFFICIAL_SCHEDULE, SHORT_PRETRAINING } from './recipe.js';

/**
 * Fine-tuning and linear probing (docs/method.md#fine-tuning): the official recipe's regularisation and augmentation,
 * with epochs, warmup and batch scaled down to small data. blr, layerDecay and minLr default to the short-pretraining
 * recipe here; a new fine-tune takes those of its source's pretraining length (core/recipe.ts).
 */
const FinetuneFields = OptimConfigSchema.extend({
  batch: int(1).max(65_536).default(OFFICIAL_SCHEDULE.batch),
  epochs: int(1).max(MAX_EPOCHS).default(OFFICIAL_SCHEDULE.epochs),
  warmupEpochs: z.number().min(0).default(OFFICIAL_SCHEDULE.warmupEpochs),
  /** lr = blr · effective batch / 256. */
  blr: z.number().positive().default(SHORT_PRETRAINING.blr),
  minLr: z.number().min(0).default(SHORT_PRETRAINING.minLr),
  beta2: z.number().min(0).lt(1).default(0.999),
  /** Layer-wise lr decay: block i gets layerDecay^(depth − i) of the head's rate. */
  layerDecay: z.number().gt(0).max(1).default(SHORT_PRETRAINING.layerDecay),
  dropPath: z.number().min(0).lt(1).default(SHORT_PRETRAINING.dropPath),
  smoothing: z.number().min(0).lt(1).default(OFFICIAL_AUGMENT.smoothing),
  /** Mixup and CutMix Beta(α, α) parameters, as the paper (0.8, 1.0); 0 turns one off. */
  mixup: z.number().min(0).default(OFFICIAL_AUGMENT.mixup),
  cutmix: z.number().min(0).default(OFFICIAL_AUGMENT.cutmix),
  /** timm's RandAugment string, as the official `--aa`; '' or null = off. */
  randAugment: z
    .string()
    .nullable()
    .default(OFFICIAL_AUGMENT.randAugment)
    .superRefine((s, ctx) => {
      try {
        if (s) parseRandAugment(s);
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: (err as Error).message });
      }
    })
    .transform((s) => s || null),
  /** Random erasing probability (pixel mode, one box), as the official `--reprob`. */
  reprob: z.number().min(0).max(1).default(OFFICIAL_AUGMENT.reprob),
  /** Smallest crop area of RandomResizedCrop during fine-tuning (timm's 0.08). */
  minScale: z.number().gt(0).max(1).default(0.08),
  valFraction: z.number().gt(0).lt(1).default(0.2),
  /** MAE's linear probe (docs/method.md#linear-probe) on the frozen backbone: BatchNorm and a Linear, LARS, crop and flip. */
  linearProbe: z.boolean().default(false),
  /** The recipe these settings came from (core/recipe.ts finetuneDefaults), as `runs show` and the app say. */
  recipe: z.enum(['official', 'small-data']).default('official'),
  /** LP-FT: the head starts as the logistic-regression probe fitted on the training images' head inputs. */
  probeInit: z.boolean().default(false),
  /** End with the baselines on the same split (raw pixels; the same recipe from the initialisation, a second fine-tune once). */
  baselines: z.boolean().default(true),
  /**
   * A linear probe's fit: 'logistic', L2 logistic regression on cached frozen features with λ chosen on a hold-out of
   * the training labels (core/analysis/linear-probe.ts); or 'lars', MAE's recipe (SGD with LARS over epochs).
   */
  probeRecipe: z.enum(['logistic', 'lars']).default('logistic'),
  /** The logistic probe's features: the mean-pooled last block ('last', the head's input) or the last 4 concatenated. */
  probeFeatures: z.enum(['last', 'last4']).default('last'),
}).superRefine((f, ctx) => {
  const issue = (path: string, message: string) => ctx.addIssue({ code: 'custom', path: [path], message });
  if (f.probeFeatures !== 'last' && (!f.linearProbe || f.probeRecipe !== 'logistic'))
    issue('probeFeatures', "features other than 'last' are for the logistic linear probe (linearProbe, probeRecipe 'logistic')");
  if (f.linearProbe && f.probeInit) issue('probeInit', 'a linear probe trains its own head: probeInit applies to fine-tuning only');
  if (!f.linearProbe) return;
  for (const k of ['smoothing', 'mixup', 'cutmix', 'reprob'] as const)
    if (f[k] !== 0) issue(k, `a linear probe trains on crops and flips with plain cross-entropy (MAE's protocol): ${k} must be 0`);
  if (f.randAugment) issue('randAugment', "a linear probe trains on crops and flips only (MAE's protocol): randAugment must be ''");
  if (f.batch < 2) issue('batch', "a linear probe's BatchNorm needs at least 2 images per batch");
});

/**
 * MAE's linear-probe recipe (main_linprobe.py), the defaults of a `linearProbe` run: 90 epochs with 10 of warmup,
 * blr 0.1 decaying to 0, no weight decay, no label smoothing, mixing or augmentation beyond crops and flips; AdamW's
 * betas, layer decay and drop path do not apply.
 */
/** MAE's LARS settings for the linear probe (util/lars.py defaults). */
export const PROBE_LARS = { momentum: 0.9, trust: 0.001 } as const;

export const LINEAR_PROBE = {
  epochs: 90,
  warmupEpochs: 10,
  blr: 0.1,
  minLr: 0,
  weightDecay: 0,
  smoothing: 0,
  mixup: 0,
  cutmix: 0,
  randAugment: null,
  reprob: 0,
} as const;

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

export const FinetuneConfigSchema = z.preprocess(
  (v) => (isRecord(v) && v.linearProbe === true ? { ...LINEAR_PROBE, ...v } : v),
  FinetuneFields,
);
export type FinetuneConfig = z.output<typeof FinetuneConfigSchema>;

export const FinetuneRunSchema = z.strictObject({
  model: ModelConfigSchema,
  finetune: FinetuneConfigSchema.default(() => FinetuneConfigSchema.parse({})),
  seed: int(0).default(0),
  /** Class names, in label index order. */
  classes: z.array(z.string()).min(2),
  /** The pretraining run and checkpoint step it starts from; null = from scratch. */
  from: z.strictObject({ runId: int(1), step: int(0) }).nullable(),
});
export type FinetuneRun = z.output<typeof FinetuneRunSchema>;
