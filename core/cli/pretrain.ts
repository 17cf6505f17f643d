import { readFileSync } from 'node:fs';
import {
  MODEL_SIZES,
  NEW_RUN,
  newRunConfig,
  PRESETS,
  sizeDefaults,
  SWIN_SIZES,
  type ConfigLayer,
  type Preset,
  type RunConfig,
} from '../config.js';
import { KNN_BUDGET } from '../analysis/knn.js';
import { DEFAULT_MINUTES, type Budget } from '../runs/budget.js';
import { DECIMAL, nonNegativeInt, parse, positiveInt, UsageError, type Flags } from './args.js';
import { indexFlags } from './index-cmd.js';
import { cadenceFlags, resumeFlags, resumeOf, runInTerminal, sessionFlags } from './session.js';

export const summary = 'pretrain a ViT or Swin with LocalMIM on a folder (default: the bundled sample images)';

const n = (help: string, arg = 'N') => ({ type: 'string', arg, help }) as const;

/** What a run gets for each flag not given: the one definition in core/config.ts, shown in the help. */
const START = newRunConfig();
const swinModel = (size: string) => sizeDefaults(size).model;
const swinSizesBySide = new Map<number, string[]>();
for (const size of Object.keys(SWIN_SIZES)) {
  const px = swinModel(size).imgSize!;
  swinSizesBySide.set(px, [...(swinSizesBySide.get(px) ?? []), size]);
}
const swinSides = [...swinSizesBySide].map(([px, sizes]) => `${px} for ${sizes.join('/')}`).join(', ');

/** Model and schedule flags, shared with `finetune --scratch` for the model's shape. */
export const MODEL_FLAGS = {
  model: n(`encoder size: ${[...Object.keys(MODEL_SIZES), ...Object.keys(SWIN_SIZES)].join(', ')} (default ${START.model.size})`, 'SIZE'),
  img: n(`input size in pixels (default ${START.model.imgSize}; Swin: ${swinSides})`, 'PX'),
  patch: n(`patch size in pixels (default ${START.model.patchSize}; Swin: ${swinModel('swin-t').patchSize})`, 'PX'),
} as const satisfies Flags;

const { optim } = START;
const OPTIONS = {
  data: n("folder of images (default: the bundled sample images); with --resume: where the run's images are now", 'DIR'),
  preset: n(`the paper's configurations: ${Object.keys(PRESETS).join(', ')} (default ${NEW_RUN.preset})`, 'NAME'),
  ...MODEL_FLAGS,
  minutes: n(
    `fit the schedule (epochs, warmup, blr) to this many minutes on this machine (default ${DEFAULT_MINUTES}, unless a schedule flag, --config or --paper-schedule is given), and without --img/--patch a ViT's input to the images' size`,
    'MIN',
  ),
  'paper-schedule': { type: 'boolean', help: "keep the preset's own schedule (the paper's: epochs, warmup, blr), not fitted to a time" },
  epochs: n(`epochs (default: fitted to --minutes; the preset's ${optim.epochs})`),
  batch: n(`images per step (default ${optim.batch})`),
  accum: n(`micro-batches accumulated per optimizer step (default ${optim.accumIter})`),
  blr: n(`base learning rate; lr = blr · batch · accum / 256 (default: fitted to --minutes; the preset's ${optim.blr})`, 'LR'),
  lr: n('absolute learning rate, instead of --blr', 'LR'),
  'min-lr': n(`final learning rate of the cosine (default ${optim.minLr})`, 'LR'),
  warmup: n(`warmup epochs (default: fitted to --minutes; the preset's ${optim.warmupEpochs})`, 'EPOCHS'),
  'mask-ratio': n(`fraction of patches masked (default ${START.model.maskRatio})`, 'R'),
  bins: n(`HOG orientation bins: 9 or 18 (default ${START.model.nbins})`),
  seed: n(`seed of data order, crops, masks and initialisation (default ${START.seed})`),
  config: n('a run config as JSON (fields as in core/config.ts); flags override it', 'FILE'),
  name: n('name of the run', 'TEXT'),
  ...resumeFlags,
  init: n("start from a run's backbone (e.g. an imported one); decoders start fresh", 'RUN[:STEP]'),
  ...indexFlags,
  'probe-data': n('a labeled folder (class = first sub-folder) the kNN monitor scores the backbone on, half as reference', 'DIR'),
  'knn-every': n(`with --probe-data: score every N steps (default: as often as keeps kNN within ${100 * KNN_BUDGET} % of the time)`),
  ...cadenceFlags,
  ...sessionFlags,
} as const satisfies Flags;

type Values = ReturnType<typeof parse<typeof OPTIONS>>['values'];

/** Flags of integer fields: decimal digits only (`0x10`, `1e1`, `16.0` are refused, whatever Number() makes of them). */
const INTEGER_FLAGS = new Set(['img', 'patch', 'bins', 'epochs', 'batch', 'accum', 'seed']);

function num(values: Partial<Values>, flag: keyof Values): number | undefined {
  const v = values[flag];
  if (v === undefined || typeof v === 'boolean') return undefined;
  if (INTEGER_FLAGS.has(flag)) return nonNegativeInt(flag, v);
  const x = Number(v);
  if (!DECIMAL.test(v) || !Number.isFinite(x)) throw new UsageError(`--${flag}: expected a number, got "${v}"`);
  return x;
}

/** A `--config` file: a JSON object whose sections are objects; the schema then rejects unknown fields. */
function readConfigFile(file: string): ConfigLayer {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new UsageError(`--config: cannot read ${file} as JSON (${(err as Error).message})`);
  }
  const isObject = (v: unknown) => typeof v === 'object' && v !== null && !Array.isArray(v);
  if (!isObject(json)) throw new UsageError(`--config: ${file} must hold a JSON object, e.g. {"optim": {"epochs": 3}}`);
  for (const key of ['model', 'optim'] as const) {
    const section = (json as Record<string, unknown>)[key];
    if (section !== undefined && !isObject(section)) throw new UsageError(`--config: ${file}: ${key} must be an object`);
  }
  return json as ConfigLayer;
}

/** A new run's config from the CLI: NEW_RUN, size and preset (core/config.ts), then the --config file, then flags. */
export function configFromFlags(values: Partial<Values>): RunConfig {
  const preset = (values.preset ?? NEW_RUN.preset) as Preset;
  if (!Object.hasOwn(PRESETS, preset))
    throw new UsageError(`--preset: unknown preset "${preset}" (choose ${Object.keys(PRESETS).join(', ')})`);
  const file = values.config ? readConfigFile(values.config) : {};
  const defined = (o: Record<string, unknown>) => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));
  const size = String(values.model ?? (file.model as { size?: unknown } | undefined)?.size ?? NEW_RUN.model.size);
  const flags = {
    model: defined({
      size: values.model,
      imgSize: num(values, 'img'),
      patchSize: num(values, 'patch'),
      maskRatio: num(values, 'mask-ratio'),
      nbins: num(values, 'bins'),
    }),
    optim: defined({
      epochs: num(values, 'epochs'),
      batch: num(values, 'batch'),
      accumIter: num(values, 'accum'),
      blr: num(values, 'blr'),
      lr: num(values, 'lr'),
      minLr: num(values, 'min-lr'),
      warmupEpochs: num(values, 'warmup'),
    }),
    ...defined({ seed: num(values, 'seed') }),
  };
  return newRunConfig(preset, size, file, flags);
}

const SCHEDULE_FLAGS = ['epochs', 'warmup', 'blr', 'lr'] as const;

/** What a new run is fitted to (core/runs/budget.ts): none where its schedule is given; its input too where that is not. */
function budgetOf(values: Partial<Values>): Budget | undefined {
  const minutes = minutesOf(values);
  const input = values.img === undefined && values.patch === undefined && values.config === undefined;
  return minutes === undefined ? undefined : { minutes, input };
}

function minutesOf(values: Partial<Values>): number | undefined {
  const given = SCHEDULE_FLAGS.find((f) => values[f] !== undefined) ?? (values['paper-schedule'] ? 'paper-schedule' : undefined);
  if (values.minutes === undefined) return given || values.config || values.resume !== undefined ? undefined : DEFAULT_MINUTES;
  if (given) throw new UsageError(`--minutes fits the schedule to a time; --${given} sets it: give one of them`);
  if (values.resume !== undefined) throw new UsageError('--minutes: a resumed run keeps its schedule; change it with --epochs');
  const minutes = Number(values.minutes);
  if (!DECIMAL.test(values.minutes) || !(minutes > 0))
    throw new UsageError(`--minutes: expected a positive number of minutes, got "${values.minutes}"`);
  return minutes;
}

export async function run(argv: string[]): Promise<void> {
  const { values } = parse(argv, OPTIONS, { usage: 'localmim pretrain [options]', summary });
  // Every flag is checked before anything is written: a bad one leaves no run behind.
  if (values.resume !== undefined && values['probe-data'] !== undefined)
    throw new UsageError('--probe-data: a resumed run keeps the probe set it started with');
  const resume = resumeOf(values, OPTIONS);
  const config = resume ? undefined : configFromFlags(values);
  const budget = budgetOf(values);
  if (values['knn-every'] !== undefined && values['probe-data'] === undefined)
    throw new UsageError('--knn-every goes with --probe-data DIR');
  const every = values['knn-every'] === undefined ? undefined : positiveInt('knn-every', values['knn-every']);
  await runInTerminal(values, {
    command: 'pretrain',
    resume,
    data: values.data,
    probeData: values['probe-data'],
    newRun: (datasetId, probeId) => ({
      new: 'pretrain',
      datasetId,
      config: config!,
      name: values.name,
      init: values.init,
      probe: probeId === undefined ? undefined : { datasetId: probeId, every },
      budget,
    }),
  });
}
