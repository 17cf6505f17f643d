/**
 * The settings of the official ViT-B fine-tuning that depend on how long the backbone was pretrained
 * (LocalMIM ViT/README.md, effective batch 1024): after 100 epochs lr 4e-3 (blr 1e-3), layer decay 0.75 and
 * min lr 1e-6; after 1600 epochs lr 2e-3 (blr 5e-4), layer decay 0.65 and min lr 1e-5.
 */
export const SHORT_PRETRAINING = { blr: 1e-3, layerDecay: 0.75, minLr: 1e-6 } as const;
export const LONG_PRETRAINING = { blr: 5e-4, layerDecay: 0.65, minLr: 1e-5 } as const;

/**
 * The official Swin-B fine-tuning (LocalMIM Swin/README.md, effective batch 1024, layer decay 0.9 and the script's min
 * lr 2.5e-7): lr 5e-3 (blr 1.25e-3) after 100 pretraining epochs, 4e-3 (blr 1e-3) after 400.
 */
export const SWIN_SHORT_PRETRAINING = { blr: 1.25e-3, layerDecay: 0.9, minLr: 2.5e-7 } as const;
export const SWIN_LONG_PRETRAINING = { blr: 1e-3, layerDecay: 0.9, minLr: 2.5e-7 } as const;

/** Pretraining epochs from which the long recipe is the nearer one: 400, halfway between 100 and 1600 on a log scale. */
export const LONG_FROM_EPOCHS = 400;

/** Whether a backbone pretrained `epochs` epochs (or imported; null: none) takes the long recipe. */
export const longPretraining = (epochs: number | 'imported' | null) =>
  epochs === 'imported' || (epochs !== null && epochs >= LONG_FROM_EPOCHS);

/**
 * The fine-tuning defaults for a backbone pretrained `epochs` epochs (its checkpoint's epoch); imported weights
 * count as long-pretrained, like the released checkpoints (1600 epochs for ViT-B, 800 for ViT-L); from scratch
 * (null) takes the short recipe. Swin backbones take the official Swin recipe of the same length. Free of imports, so the app's form shows the same defaults.
 */
export function finetuneRecipe(
  epochs: number | 'imported' | null,
  family: 'vit' | 'swin' = 'vit',
): { blr: number; layerDecay: number; minLr: number } {
  const long = longPretraining(epochs);
  if (family === 'swin') return { ...(long ? SWIN_LONG_PRETRAINING : SWIN_SHORT_PRETRAINING) };
  return { ...(long ? LONG_PRETRAINING : SHORT_PRETRAINING) };
}
