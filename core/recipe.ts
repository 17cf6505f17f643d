/** The settings of the official fine-tuning that depend on the backbone and how long it was pretrained. */
export interface FinetuneRecipe {
  blr: number;
  layerDecay: number;
  minLr: number;
  dropPath: number;
}

/**
 * The official ViT-B fine-tuning (LocalMIM ViT/README.md, effective batch 1024, drop path 0.1): after 100 epochs lr
 * 4e-3 (blr 1e-3), layer decay 0.75 and min lr 1e-6; after 1600 epochs lr 2e-3 (blr 5e-4), layer decay 0.65 and min
 * lr 1e-5.
 */
export const SHORT_PRETRAINING = { blr: 1e-3, layerDecay: 0.75, minLr: 1e-6, dropPath: 0.1 } as const;
export const LONG_PRETRAINING = { blr: 5e-4, layerDecay: 0.65, minLr: 1e-5, dropPath: 0.1 } as const;

/**
 * The official ViT-L fine-tuning after its 800 pretraining epochs (ViT/README.md: lr 3e-3 at 64 × 2 × 8 = 1024, so
 * blr 7.5e-4; layer decay 0.75, drop path 0.2, the script's min lr 1e-6), the only ViT-L recipe published.
 */
export const VIT_LARGE = { blr: 7.5e-4, layerDecay: 0.75, minLr: 1e-6, dropPath: 0.2 } as const;

/**
 * The official Swin-B fine-tuning (LocalMIM Swin/README.md, layer decay 0.9, drop path 0.1 and the script's min lr
 * 2.5e-7): lr 5e-3 at batch 1024 (blr 1.25e-3) after 100 pretraining epochs; after 400, lr 4e-3 at batch 1024 for a
 * pixel-target backbone (blr 1e-3) and at batch 2048 (`accum_iter=2`) for a HOG one (blr 5e-4).
 */
export const SWIN_SHORT_PRETRAINING = { blr: 1.25e-3, layerDecay: 0.9, minLr: 2.5e-7, dropPath: 0.1 } as const;
export const SWIN_LONG_PRETRAINING = { blr: 1e-3, layerDecay: 0.9, minLr: 2.5e-7, dropPath: 0.1 } as const;
export const SWIN_LONG_HOG = { ...SWIN_LONG_PRETRAINING, blr: 5e-4 } as const;

/**
 * The official Swin-L fine-tuning after its 800 pretraining epochs (Swin/README.md: lr 2e-3 at 32 × 8 × 8 = 2048, so
 * blr 2.5e-4; layer decay 0.8, drop path 0.3, min lr 2.5e-7), the only Swin-L recipe published.
 */
export const SWIN_LARGE = { blr: 2.5e-4, layerDecay: 0.8, minLr: 2.5e-7, dropPath: 0.3 } as const;

/** Pretraining epochs from which the long recipe is the nearer one: 400, halfway between 100 and 1600 on a log scale. */
export const LONG_FROM_EPOCHS = 400;

/** Whether a backbone pretrained `epochs` epochs (or imported; null: none) takes the long recipe. */
export const longPretraining = (epochs: number | 'imported' | null) =>
  epochs === 'imported' || (epochs !== null && epochs >= LONG_FROM_EPOCHS);

/** The backbone a recipe is chosen for: its size (`vit-*`, `swin-*`) and pretraining target. */
export interface RecipeModel {
  size: string;
  target?: 'hog' | 'pixel';
}

/**
 * The fine-tuning defaults for a backbone pretrained `epochs` epochs (its checkpoint's epoch); imported weights
 * count as long-pretrained, like the released checkpoints (1600 epochs for ViT-B, 800 for ViT-L); from scratch
 * (null) takes the short recipe. ViT-L and Swin-L take their one official recipe; Swin-B (and the other Swin sizes)
 * the official Swin recipe of the same length and target. Free of imports, so the app's form shows the same defaults.
 */
export function finetuneRecipe(epochs: number | 'imported' | null, model: RecipeModel = { size: 'vit-base' }): FinetuneRecipe {
  const long = longPretraining(epochs);
  if (model.size === 'vit-large') return { ...VIT_LARGE };
  if (model.size === 'swin-l') return { ...SWIN_LARGE };
  if (model.size.startsWith('swin-')) {
    if (!long) return { ...SWIN_SHORT_PRETRAINING };
    return { ...(model.target === 'pixel' ? SWIN_LONG_PRETRAINING : SWIN_LONG_HOG) };
  }
  return { ...(long ? LONG_PRETRAINING : SHORT_PRETRAINING) };
}

/**
 * The resize kernel of a fine-tuning job's training crop, as the official transforms (docs/method.md#fine-tuning):
 * bicubic for MAE's linear probe (`interpolation=3`) and for Swin (`'bicubic'`, which timm 0.3.2 honours); bilinear for
 * the ViT fine-tuning, whose `InterpolationMode.BICUBIC` timm 0.3.2 does not recognise.
 */
export const cropKernel = (f: { linearProbe: boolean }, model: RecipeModel): 'cubic' | 'linear' =>
  f.linearProbe || model.size.startsWith('swin-') ? 'cubic' : 'linear';

/** The official recipe's augmentation and regularisation, and the schedule it is scaled down to here (epochs, batch). */
export const OFFICIAL_AUGMENT = { smoothing: 0.1, mixup: 0.8, cutmix: 1, randAugment: 'rand-m9-mstd0.5-inc1', reprob: 0.25 } as const;
export const OFFICIAL_SCHEDULE = { epochs: 50, warmupEpochs: 5, batch: 32 } as const;

/** Which fine-tuning recipe a request asks for; `auto` chooses by the labeled set's size. */
export const RECIPE_CHOICES = ['auto', 'official', 'small-data'] as const;
export type RecipeChoice = (typeof RECIPE_CHOICES)[number];
export type RecipeName = Exclude<RecipeChoice, 'auto'>;

/**
 * Labeled training images from which `auto` takes the official recipe: its 50 epochs are then ≥ 78,000 steps at batch
 * 32, the regime Mixup, CutMix and RandAugment were tuned for; below, a budget in epochs is a few hundred steps of
 * augmentation too strong to learn from (docs/results.md#small-data-recipe).
 */
export const SMALL_DATA_BELOW = 50_000;

/**
 * The small-data recipe (docs/results.md#small-data-recipe): a budget in optimizer steps, started from the linear
 * probe (LP-FT), AdamW with layer decay at a low rate, mild crops (≥ 80 % of the image) and flips; no drop path, label
 * smoothing, Mixup, CutMix, RandAugment or erasing: measured, the fitted probe head meets ImageNet-strength crops with
 * losses of 5–7 and fine-tuning falls further below it. Anchors: timm's and LightlyTrain's fine-tuning defaults, the
 * ViT paper's short warmup and cosine.
 */
export const SMALL_DATA = {
  steps: 300,
  warmupSteps: 30,
  batch: 32,
  blr: 2.5e-4,
  minLr: 1e-6,
  layerDecay: 0.75,
  weightDecay: 0.05,
  dropPath: 0,
  smoothing: 0,
  mixup: 0,
  cutmix: 0,
  randAugment: null,
  reprob: 0,
  minScale: 0.8,
  probeInit: true,
} as const;

/** Fine-tuning settings by recipe; fields absent here take the config schema's defaults. */
export type FinetuneDefaults = Record<string, number | string | boolean | null> & { recipe: RecipeName };

/**
 * The fine-tuning defaults for `labeled` training images, and why: the official recipe for the source's pretraining
 * length (`finetuneRecipe`) where the set is large or asked for, else the small-data recipe, its step budget turned
 * into epochs of `batch` (given, or the recipe's). Free of imports, like the rest of this file: the app's form shows these.
 */
export function finetuneDefaults(
  labeled: number,
  choice: RecipeChoice,
  epochs: number | 'imported' | null,
  model: RecipeModel = { size: 'vit-base' },
  batch?: number,
): { defaults: FinetuneDefaults; why: string } {
  const recipe: RecipeName = choice !== 'auto' ? choice : labeled < SMALL_DATA_BELOW ? 'small-data' : 'official';
  const size = `${labeled.toLocaleString('en')} labeled images ${labeled < SMALL_DATA_BELOW ? '<' : '≥'} ${SMALL_DATA_BELOW.toLocaleString('en')}`;
  const reason = choice === 'auto' ? size : `asked for; ${size}`;
  if (recipe === 'official')
    return {
      defaults: { recipe, ...OFFICIAL_SCHEDULE, ...OFFICIAL_AUGMENT, ...finetuneRecipe(epochs, model) },
      why: `recipe: official (${reason}): ${OFFICIAL_SCHEDULE.epochs} epochs, Mixup, CutMix, RandAugment, as the paper's ImageNet fine-tuning`,
    };
  const { steps, warmupSteps, ...rest } = SMALL_DATA;
  const perEpoch = Math.max(1, Math.floor(labeled / (batch ?? SMALL_DATA.batch)));
  const n = Math.max(1, Math.round(steps / perEpoch));
  return {
    defaults: { recipe, ...rest, epochs: n, warmupEpochs: Math.min(n, warmupSteps / perEpoch) },
    why: `recipe: small-data (${reason}): ${n * perEpoch} steps (${n} epochs of ${perEpoch}) from the linear probe, lr ${((rest.blr * (batch ?? rest.batch)) / 256).toExponential(1)}, crops and flips`,
  };
}
