import { readFileSync } from 'node:fs';
import { parseRunConfig, presetFor, PRESETS, sizeDefaults, SWIN_SIZES, type Preset, type RunConfig } from '../config.js';
import { parse, UsageError, type Flags } from './args.js';
import { cadenceFlags, resumeFlags, resumeOf, runInTerminal, sessionFlags } from './session.js';

export const summary = 'pretrain a ViT or Swin with LocalMIM on a folder (default: the bundled sample images)';

const n = (help: string, arg = 'N') => ({ type: 'string', arg, help }) as const;

/** Model and schedule flags, shared with `finetune --scratch` for the model's shape. */
export const MODEL_FLAGS = {
  model: n(`encoder size: vit-tiny, vit-small, vit-base, vit-large, ${Object.keys(SWIN_SIZES).join(', ')} (default vit-tiny)`, 'SIZE'),
  img: n('input size in pixels (default 64; Swin: 112 for swin-tiny, else 224)', 'PX'),
  patch: n('patch size in pixels (default 8; Swin: 4)', 'PX'),
} as const satisfies Flags;

const OPTIONS = {
  data: n('folder of images (default: the bundled sample images)', 'DIR'),
  preset: n(`the paper's configurations: ${Object.keys(PRESETS).join(', ')} (default localmim-hog)`, 'NAME'),
  ...MODEL_FLAGS,
  epochs: n('epochs (default 100)'),
  batch: n('images per step (default 32)'),
  accum: n('micro-batches accumulated per optimizer step (default 1)'),
  blr: n('base learning rate; lr = blr · batch · accum / 256 (default 2e-4)', 'LR'),
  lr: n('absolute learning rate, instead of --blr', 'LR'),
  warmup: n('warmup epochs (default 10)', 'EPOCHS'),
  'mask-ratio': n('fraction of patches masked (default 0.75)', 'R'),
  bins: n('HOG orientation bins: 9 or 18 (default 9)'),
  seed: n('seed of data order, crops, masks and initialisation (default 0)'),
  config: n('a run config as JSON (fields as in core/config.ts); flags override it', 'FILE'),
  name: n('name of the run', 'TEXT'),
  ...resumeFlags,
  init: n("start from a run's backbone (e.g. an imported one); decoders start fresh", 'RUN[:STEP]'),
  ...cadenceFlags,
  ...sessionFlags,
} as const satisfies Flags;

type Values = ReturnType<typeof parse<typeof OPTIONS>>['values'];

function num(values: Partial<Values>, flag: keyof Values): number | undefined {
  const v = values[flag];
  if (v === undefined || typeof v === 'boolean') return undefined;
  const x = Number(v);
  if (v.trim() === '' || !Number.isFinite(x)) throw new UsageError(`--${flag}: expected a number, got "${v}"`);
  return x;
}

/** A `--config` file: a JSON object whose sections are objects; the schema then rejects unknown fields. */
function readConfigFile(file: string): Record<string, unknown> {
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
  return json as Record<string, unknown>;
}

/** CLI defaults sized for a CPU and the sample images, then preset, then --config file, then flags. */
export function configFromFlags(values: Partial<Values>): RunConfig {
  const preset = (values.preset ?? 'localmim-hog') as Preset;
  if (!Object.hasOwn(PRESETS, preset))
    throw new UsageError(`--preset: unknown preset "${preset}" (choose ${Object.keys(PRESETS).join(', ')})`);
  const file = values.config ? readConfigFile(values.config) : {};
  const defined = (o: Record<string, unknown>) => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));
  const fileModel = (file.model ?? {}) as { size?: unknown };
  const size = String(values.model ?? fileModel.size ?? 'vit-tiny');
  const bySize = sizeDefaults(size);
  return parseRunConfig({
    ...file,
    model: {
      size: 'vit-tiny',
      imgSize: 64,
      patchSize: 8,
      ...bySize.model,
      ...presetFor(preset, size),
      ...fileModel,
      ...defined({
        size: values.model,
        imgSize: num(values, 'img'),
        patchSize: num(values, 'patch'),
        maskRatio: num(values, 'mask-ratio'),
        nbins: num(values, 'bins'),
      }),
    },
    optim: {
      ...bySize.optim,
      ...(file.optim as object),
      ...defined({
        epochs: num(values, 'epochs'),
        batch: num(values, 'batch'),
        accumIter: num(values, 'accum'),
        blr: num(values, 'blr'),
        lr: num(values, 'lr'),
        warmupEpochs: num(values, 'warmup'),
      }),
    },
    ...defined({ seed: num(values, 'seed') }),
  });
}

export async function run(argv: string[]): Promise<void> {
  const { values } = parse(argv, OPTIONS, { usage: 'localmim pretrain [options]', summary });
  // Every flag is checked before anything is written: a bad one leaves no run behind.
  const resume = resumeOf(values);
  const config = resume ? undefined : configFromFlags(values);
  await runInTerminal(values, {
    command: 'pretrain',
    resume,
    data: values.data,
    newRun: (datasetId) => ({ new: 'pretrain', datasetId, config: config!, name: values.name, init: values.init }),
  });
}
