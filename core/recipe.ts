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
