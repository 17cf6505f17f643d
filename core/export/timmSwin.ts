import type { NamedTensor } from '../safetensors.js';

// The official Swin code (and timm before 0.9) ends stage i with its patch merging, `layers.i.downsample.*`; timm ≥ 0.9
// starts stage i + 1 with it, `layers.{i+1}.downsample.*`, and names the classifier `head.fc`. The weights are the same
// tensors in the same layouts: timm concatenates the 2×2 neighbours in the fine-tuning model's order (docs/method.md#swin-export).

const DOWNSAMPLE = /^layers\.(\d+)\.downsample\.(.+)$/;

/**
 * A Swin backbone (official names: stage-final patch merging, `norm` the final norm, `head`) under timm ≥ 0.9's names.
 * Buffers timm rebuilds (`relative_position_index`, `attn_mask`: non-persistent there) are left out.
 */
export function toTimmSwin(tensors: ReadonlyMap<string, NamedTensor>): Map<string, NamedTensor> {
  const out = new Map<string, NamedTensor>();
  for (const [name, t] of tensors) {
    if (name.endsWith('.relative_position_index') || name.endsWith('.attn_mask')) continue;
    const m = DOWNSAMPLE.exec(name);
    out.set(m ? `layers.${Number(m[1]) + 1}.downsample.${m[2]}` : name.replace(/^head\./, 'head.fc.'), t);
  }
  return out;
}

/**
 * Official names of a timm Swin state dict, of either layout: timm ≥ 0.9 (merging at the start of the next stage,
 * `head.fc`) or the official code's and older timm's (merging at the end of its stage, `head`). Buffers are dropped.
 */
export function fromTimmSwin(tensors: ReadonlyMap<string, NamedTensor>): Map<string, NamedTensor> {
  // timm ≥ 0.9 has no merging before stage 0; the official layout has one after it.
  const startOfStage = ![...tensors.keys()].some((n) => n.startsWith('layers.0.downsample.'));
  const out = new Map<string, NamedTensor>();
  for (const [name, t] of tensors) {
    if (name.endsWith('.relative_position_index') || name.endsWith('.attn_mask')) continue;
    const m = DOWNSAMPLE.exec(name);
    out.set(m && startOfStage ? `layers.${Number(m[1]) - 1}.downsample.${m[2]}` : name.replace(/^head\.fc\./, 'head.'), t);
  }
  return out;
}
