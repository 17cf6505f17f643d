import { FinetuneConfigSchema, parseConfig } from '../config.js';
import { DECIMAL, nonNegativeInt, parse, UsageError, type Flags } from './args.js';
import { configFromFlags, MODEL_FLAGS } from './pretrain.js';
import { indexFlags } from './index-cmd.js';
import { cadenceFlags, resumeFlags, resumeOf, runInTerminal, sessionFlags } from './session.js';

export const summary = 'fine-tune (or --linear-probe) a pretrained run on a labeled folder: localmim finetune --from RUN[:STEP] --data DIR';

const n = (help: string, arg = 'N') => ({ type: 'string', arg, help }) as const;

/** Fine-tuning flags and the config field each sets (core/config.ts FinetuneConfigSchema). */
const SETTINGS = {
  epochs: ['epochs', n('epochs (default 50; 90 for a linear probe)')],
  batch: ['batch', n('images per step (default 32)')],
  blr: [
    'blr',
    n(
      'base learning rate; lr = blr · batch / 256 (default by the source: 1e-3, or 5e-4 after ≥ 400 epochs or imported; 0.1 for a linear probe)',
      'LR',
    ),
  ],
  'min-lr': ['minLr', n('final learning rate of the cosine (default by the source: 1e-6, or 1e-5; 0 for a linear probe)', 'LR')],
  'layer-decay': ['layerDecay', n('layer-wise lr decay (default by the source: 0.75, or 0.65)', 'D')],
  'drop-path': ['dropPath', n('stochastic depth rate (default 0.1)', 'P')],
  smoothing: ['smoothing', n('label smoothing (default 0.1; none in a linear probe)', 'E')],
  mixup: ['mixup', n('Mixup α; 0 = off (default 0.8; none in a linear probe)', 'A')],
  cutmix: ['cutmix', n('CutMix α; 0 = off (default 1; none in a linear probe)', 'A')],
  reprob: ['reprob', n('random erasing probability; 0 = off (default 0.25; none in a linear probe)', 'P')],
  'val-fraction': ['valFraction', n('share of each class held out for validation, in (0, 1) (default 0.2)', 'F')],
  warmup: ['warmupEpochs', n('warmup epochs (default 5; 10 for a linear probe)', 'EPOCHS')],
} as const;

const OPTIONS = {
  from: n('the pretraining (or imported) run to start from', 'RUN[:STEP]'),
  scratch: { type: 'boolean', default: false, help: 'train from random weights instead (the baseline); model from --model/--img/--patch' },
  data: n('labeled folder: one sub-folder per class (or train/ and val/ with class folders inside)', 'DIR'),
  'linear-probe': {
    type: 'boolean',
    default: false,
    help: "MAE's linear probe: BatchNorm and a linear head on the frozen backbone's mean-pooled tokens, LARS, crops and flips",
  },
  'rand-augment': n("timm's RandAugment string; '' = off (default rand-m9-mstd0.5-inc1; none in a linear probe)", 'SPEC'),
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
  const resume = resumeOf(values);
  if (!resume) {
    if (!values.data) throw new UsageError('--data DIR (a folder with one sub-folder per class) is required');
    if (!values.from === !values.scratch)
      throw new UsageError('give --from RUN[:STEP] to fine-tune a pretrained run, or --scratch for the baseline');
  }
  const finetune: Record<string, unknown> = {
    ...(values['linear-probe'] && { linearProbe: true }),
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
  const seed = values.seed === undefined ? 0 : nonNegativeInt('seed', values.seed);
  const model = values.scratch ? configFromFlags({ model: values.model, img: values.img, patch: values.patch }).model : undefined;
  await runInTerminal(values, {
    command: 'finetune',
    resume,
    data: values.data,
    newRun: (datasetId) => ({ new: 'finetune', datasetId, from: values.from ?? null, model, finetune, seed, name: values.name }),
  });
}
