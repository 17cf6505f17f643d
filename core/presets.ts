import {
  DECODERS,
  isSwinSize,
  modelFamily,
  parseRunConfig,
  SWIN_SIZES,
  type ModelConfig,
  type ModelFamily,
  type OptimConfig,
  type RunConfig,
} from './config.js';

/**
 * The paper's configurations, as starting points: LocalMIM with HOG or pixels, isolated gradients, the global and
 * fusion comparisons (paper Table 7), each with LocalMIM's decoders; and the MAE baseline, MAE's own model: one
 * decoder of MAE's size on the last block, normalized pixels.
 */
export const PRESETS = {
  'localmim-hog': { variant: 'local', target: 'hog', ...DECODERS.localmim },
  'localmim-pixel': { variant: 'local', target: 'pixel', ...DECODERS.localmim },
  mae: { variant: 'global', target: 'pixel', normPix: true, ...DECODERS.mae },
  isolated: { variant: 'isolated', target: 'hog', ...DECODERS.localmim },
  global: { variant: 'global', target: 'hog', ...DECODERS.localmim },
  fusion: { variant: 'fusion', target: 'hog', ...DECODERS.localmim },
} as const satisfies Record<string, Partial<ModelConfig>>;
export type Preset = keyof typeof PRESETS;

const LABELS: Record<Exclude<Preset, 'mae'>, string> = {
  'localmim-hog': 'LocalMIM · HOG',
  'localmim-pixel': 'LocalMIM · pixels',
  isolated: 'LocalMIM · isolated gradients',
  global: "Global (LocalMIM's decoder on the last block)",
  fusion: 'Global with feature fusion',
};

/** How the app names a preset; on a Swin, `mae` is GreenMIM's baseline (presetFor). */
export const presetLabel = (preset: Preset, family: ModelFamily): string =>
  preset === 'mae' ? `${family === 'swin' ? 'GreenMIM' : 'MAE'} baseline (its decoder, pixels and schedule)` : LABELS[preset];

/** The paper's Swin sizes, trained with the official Swin-B recipe on GPU machines (docs/method.md#swin-recipe). */
const isPaperSwin = (size: string) => isSwinSize(size) && size !== 'swin-tiny';

/** What a size or a preset brings to a new run, each section merged over the defaults. */
export interface RunDefaults {
  model: Partial<ModelConfig>;
  optim: Partial<OptimConfig>;
}

/**
 * Defaults a size brings to a new run: for Swin, its image side, patch 4, and the official Swin schedule's base rate
 * and floor (`run_pretrain.py`: blr 1e-4, min lr 0); for Swin-T/S/B also the official Swin-B recipe's length and
 * effective batch (400 epochs, 40 of warmup, 256 × 8 = 2048 images per step), for Swin-L its own (800 epochs, 40 of
 * warmup, 128 × 4 accumulated × 8 GPUs = 4096). ViT-L brings the official ViT-L recipe (ViT/README.md: 800 epochs, 40
 * of warmup, blr 1.5e-4, 128 × 4 accumulated × 8 GPUs = 4096); the other ViTs nothing.
 */
export function sizeDefaults(size: string): RunDefaults {
  if (size === 'vit-large') return { model: {}, optim: { epochs: 800, warmupEpochs: 40, blr: 1.5e-4, batch: 128, accumIter: 32 } };
  if (!isSwinSize(size)) return { model: {}, optim: {} };
  const recipe =
    size === 'swin-l'
      ? { epochs: 800, warmupEpochs: 40, batch: 128, accumIter: 32 }
      : isPaperSwin(size)
        ? { epochs: 400, warmupEpochs: 40, batch: 256, accumIter: 8 }
        : {};
  return { model: { imgSize: SWIN_SIZES[size].imgSize, patchSize: 4 }, optim: { blr: 1e-4, minLr: 0, ...recipe } };
}

/**
 * The baselines' own schedules (docs/method.md#baselines): MAE's (PRETRAIN.md: blr 1.5e-4; main_pretrain.py: min lr
 * 0) on a ViT; GreenMIM's on a Swin (scripts/run_greenmim_swin_base.sh: blr 1.5e-4, 40 warmup epochs;
 * run_greenmim_swin_large_win14.sh: blr 1e-4, 256 × 8 GPUs = 2048 images a step), its length on the paper's sizes only.
 */
function baselineOptim(size: string): Partial<OptimConfig> {
  if (!isSwinSize(size)) return { blr: 1.5e-4, minLr: 0 };
  if (size === 'swin-l') return { blr: 1e-4, warmupEpochs: 40, batch: 256, accumIter: 8 };
  return isPaperSwin(size) ? { blr: 1.5e-4, warmupEpochs: 40 } : { blr: 1.5e-4 };
}

/**
 * A preset's fields for a model size, over the size's defaults: Swin sizes take the official Swin decoders
 * (DECODERS.swin), except `mae`, which on a Swin is GreenMIM's baseline (GreenMIM's decoder on the last stage,
 * normalized pixels); ViT-L and Swin-T/S/B/L with HOG targets the official recipes' 18 bins with the HOG bias; `mae` the
 * baseline's own schedule (baselineOptim).
 */
export function presetFor(preset: Preset, size: string): RunDefaults {
  const fields = PRESETS[preset];
  const optim = preset === 'mae' ? baselineOptim(size) : {};
  const hog = (isPaperSwin(size) || size === 'vit-large') && fields.target === 'hog' ? { nbins: 18 as const, hogBias: true } : {};
  if (!isSwinSize(size)) return { model: { ...fields, ...hog }, optim };
  return { model: { ...fields, ...(preset === 'mae' ? DECODERS.greenmim : DECODERS.swin), ...hog }, optim };
}

/**
 * Where a new run starts in the app and the CLI before any choice is made: a ViT-Tiny at 64 px, patch 8, sized for a
 * CPU and the sample images. The schema's own defaults stay the paper's (224 px, patch 16) for config files.
 */
export const NEW_RUN = { preset: 'localmim-hog', model: { size: 'vit-tiny', imgSize: 64, patchSize: 8 } } as const satisfies {
  preset: Preset;
  model: Partial<ModelConfig>;
};

/** A partial run config, as a file or a form gives it: sections merge field by field. */
export type ConfigLayer = { model?: object; optim?: object } & Record<string, unknown>;

/**
 * A new run's config, parsed once: NEW_RUN, then what the size brings (sizeDefaults), then the preset as it applies to
 * the size (presetFor), then each layer in turn (a config file, flags, a form).
 */
export function newRunConfig(preset: Preset = NEW_RUN.preset, size: string = NEW_RUN.model.size, ...layers: ConfigLayer[]): RunConfig {
  const bySize = sizeDefaults(size);
  const byPreset = presetFor(preset, size);
  const base: ConfigLayer = {
    model: { ...NEW_RUN.model, size, ...bySize.model, ...byPreset.model },
    optim: { ...bySize.optim, ...byPreset.optim },
  };
  const merged = layers.reduce<ConfigLayer>(
    (into, l) => ({ ...into, ...l, model: { ...into.model, ...l.model }, optim: { ...into.optim, ...l.optim } }),
    base,
  );
  return parseRunConfig(merged);
}

/** Where each preset starts a new run of `size` (newRunConfig), named as the app shows it: the new-run form's choices. */
export function presetStarts(size: string): Record<Preset, { label: string; config: RunConfig }> {
  const start = (p: Preset) => ({ label: presetLabel(p, modelFamily({ size })), config: newRunConfig(p, size) });
  return Object.fromEntries((Object.keys(PRESETS) as Preset[]).map((p) => [p, start(p)])) as Record<Preset, ReturnType<typeof start>>;
}
