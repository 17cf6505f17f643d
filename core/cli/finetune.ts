import { parseConfig } from '../config.js';
import { FinetuneConfigSchema, LINEAR_PROBE } from '../finetune-config.js';
import {
  LONG_FROM_EPOCHS,
  LONG_PRETRAINING,
  OFFICIAL_AUGMENT,
  RECIPE_CHOICES,
  SHORT_PRETRAINING,
  SMALL_DATA_BELOW,
  type RecipeChoice,
} from '../recipe.js';
import { parseCheckpointId } from '../runs/checkpoints.js';
import { DECIMAL, nonNegativeInt, parse, UsageError, type Flags } from './args.js';
import { configFromFlags, MODEL_FLAGS } from './pretrain.js';
import { indexFlags } from './index-cmd.js';
import { cadenceFlags, resumeFlags, resumeOf, runInTerminal, sessionFlags } from './session.js';

export const summary = 'fine-tune (or --linear-probe) a pretrained run on a labeled folder: localmim finetune --from RUN[:STEP] --data DIR';

const n = (help: string, arg = 'N') => ({ type: 'string', arg, help }) as const;

/** What a fine-tune gets for each flag not given: the official recipe's, as the schema defaults them, shown in the help. */
const START = FinetuneConfigSchema.parse({});
/** Defaults that follow the source's pretraining length (core/recipe.ts finetuneRecipe). */
const bySource = (k: 'blr' | 'minLr' | 'layerDecay') => `default by the source: ${SHORT_PRETRAINING[k]}, or ${LONG_PRETRAINING[k]}`;
const noProbe = (k: keyof typeof OFFICIAL_AUGMENT) => `default ${START[k]}; none in a linear probe`;

/** Fine-tuning flags and the config field each sets (core/finetune-config.ts FinetuneConfigSchema). */
const SETTINGS = {
  epochs: [
    'epochs',
    n(`epochs (default by the recipe: ${START.epochs} official, its step budget small-data; ${LINEAR_PROBE.epochs} for the LARS probe)`),
  ],
  batch: ['batch', n(`images per step (default ${START.batch})`)],
  blr: [
    'blr',
    n(
      `base learning rate; lr = blr · batch / 256 (${bySource('blr')} after ≥ ${LONG_FROM_EPOCHS} epochs or imported; ${LINEAR_PROBE.blr} for the LARS probe)`,
      'LR',
    ),
  ],
  lr: ['lr', n('absolute learning rate, instead of --blr', 'LR')],
  'min-lr': ['minLr', n(`final learning rate of the cosine (${bySource('minLr')}; ${LINEAR_PROBE.minLr} for the LARS probe)`, 'LR')],
  'layer-decay': ['layerDecay', n(`layer-wise lr decay (${bySource('layerDecay')})`, 'D')],
  'drop-path': ['dropPath', n(`stochastic depth rate (default ${START.dropPath})`, 'P')],
  smoothing: ['smoothing', n(`label smoothing (${noProbe('smoothing')})`, 'E')],
  mixup: ['mixup', n(`Mixup α; 0 = off (${noProbe('mixup')})`, 'A')],
  cutmix: ['cutmix', n(`CutMix α; 0 = off (${noProbe('cutmix')})`, 'A')],
  reprob: ['reprob', n(`random erasing probability; 0 = off (${noProbe('reprob')})`, 'P')],
  'min-scale': [
    'minScale',
    n(`smallest crop area of RandomResizedCrop, in (0, 1] (default by the recipe: ${START.minScale} official, small-data's)`, 'F'),
  ],
  'val-fraction': ['valFraction', n(`share of each class held out for validation, in (0, 1) (default ${START.valFraction})`, 'F')],
  warmup: ['warmupEpochs', n(`warmup epochs (default ${START.warmupEpochs}; ${LINEAR_PROBE.warmupEpochs} for the LARS probe)`, 'EPOCHS')],
} as const;

const OPTIONS = {
  from: n('the pretraining (or imported) run to start from', 'RUN[:STEP]'),
  scratch: { type: 'boolean', default: false, help: 'train from random weights instead (the baseline); model from --model/--img/--patch' },
  data: n('labeled folder: one sub-folder per class (or train/ and val/ with class folders inside)', 'DIR'),
  'linear-probe': {
    type: 'boolean',
    default: false,
    help: 'a linear probe of the frozen backbone: L2 logistic regression on its features, λ chosen on a hold-out of the training labels, beside the same probe of raw pixels and of the untrained backbone',
  },
  'no-baselines': {
    type: 'boolean',
    default: false,
    help: 'skip the baselines on the same split (raw pixels; the same recipe from the initialisation: a second fine-tune, once per split, model, seed and recipe)',
  },
  recipe: n(
    `auto (default): the small-data recipe below ${SMALL_DATA_BELOW} labeled training images (a step budget from the linear probe, LP-FT), else the official one; or official, small-data`,
    'NAME',
  ),
  'probe-recipe': n(
    "logistic (default), or lars: MAE's recipe for ImageNet-sized batches (BatchNorm and a linear head trained by LARS over epochs, crops and flips)",
    'NAME',
  ),
  'probe-features': n(
    "the logistic probe's features: last (the last block's mean-pooled tokens, default) or last4 (the last 4 blocks', as DINOv2)",
    'KIND',
  ),
  'rand-augment': n(`timm's RandAugment string; '' = off (${noProbe('randAugment')})`, 'SPEC'),
  ...(Object.fromEntries(Object.entries(SETTINGS).map(([flag, [, f]]) => [flag, f])) as {
    [K in keyof typeof SETTINGS]: (typeof SETTINGS)[K][1];
  }),
  ...MODEL_FLAGS,
  seed: n('seed of the split, data order and augmentation (default 0)'),
  name: n('name of the run', 'TEXT'),
  ...resumeFlags,
  ...indexFlags,
  ...cadenceFlags,
  ...sessionFlags,
} as const satisfies Flags;

export async function run(argv: string[]): Promise<void> {
  const { values } = parse(argv, OPTIONS, { usage: 'localmim finetune (--from RUN[:STEP] | --scratch) --data DIR [options]', summary });
  const resume = resumeOf(values, OPTIONS);
  if (!resume) {
    if (!values.data) throw new UsageError('--data DIR (a folder with one sub-folder per class) is required');
    if (!values.from === !values.scratch)
      throw new UsageError('give --from RUN[:STEP] to fine-tune a pretrained run, or --scratch for the baseline');
  }
  const recipe = values.recipe;
  if (recipe !== undefined && !RECIPE_CHOICES.includes(recipe as RecipeChoice))
    throw new UsageError(`--recipe: expected ${RECIPE_CHOICES.join(', ')}, got "${recipe}"`);
  if (recipe !== undefined && values['linear-probe']) throw new UsageError('--recipe: a linear probe has its own recipe');
  for (const flag of ['probe-recipe', 'probe-features'] as const)
    if (values[flag] !== undefined && !values['linear-probe']) throw new UsageError(`--${flag} goes with --linear-probe`);
  const finetune: Record<string, unknown> = {
    ...(values['linear-probe'] && { linearProbe: true }),
    ...(values['no-baselines'] && { baselines: false }),
    ...(values['probe-recipe'] !== undefined && { probeRecipe: values['probe-recipe'] }),
    ...(values['probe-features'] !== undefined && { probeFeatures: values['probe-features'] }),
    ...(values['rand-augment'] !== undefined && { randAugment: values['rand-augment'] }),
  };
  for (const [flag, [field]] of Object.entries(SETTINGS)) {
    const v = values[flag as keyof typeof SETTINGS];
    if (v === undefined) continue;
    if (flag === 'epochs' || flag === 'batch') finetune[field] = nonNegativeInt(flag, v);
    else if (!DECIMAL.test(v) || !Number.isFinite(Number(v))) throw new UsageError(`--${flag}: expected a number, got "${v}"`);
    else finetune[field] = Number(v);
  }
  parseConfig(FinetuneConfigSchema, finetune, 'finetune'); // named errors now, before the folder is indexed
  if (recipe !== undefined) finetune.recipe = recipe;
  const seed = values.seed === undefined ? 0 : nonNegativeInt('seed', values.seed);
  const model = values.scratch ? configFromFlags({ model: values.model, img: values.img, patch: values.patch }).model : undefined;
  await runInTerminal(values, {
    command: 'finetune',
    resume,
    data: values.data,
    newRun: (datasetId) => ({
      new: 'finetune',
      datasetId,
      from: values.from === undefined ? null : parseCheckpointId(values.from),
      model,
      finetune,
      seed,
      name: values.name,
    }),
  });
}
