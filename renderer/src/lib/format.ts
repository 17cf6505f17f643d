export function duration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '—';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h ? `${h} h ${m} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
}

export const count = (n: number) => (n >= 1e6 ? `${(n / 1e6).toFixed(2)} M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)} k` : String(n));

/** Exponential moving average, as TensorBoard's smoothing slider. */
export function smooth(values: number[], weight: number): number[] {
  let last = values[0] ?? 0;
  return values.map((v) => (last = last * weight + (1 - weight) * v));
}

/** A pretraining model's decoders: their size, and how many (one on the last block for the global variant, MAE's). */
export function decoderSize(m: { variant: string; decoderDim: number; decoderDepth: number; decoderHeads: number }): string {
  const blocks = `${m.decoderDim}-d, ${m.decoderDepth} block${m.decoderDepth === 1 ? '' : 's'}, ${m.decoderHeads} heads`;
  if (m.variant === 'fusion') return `one decoder on the tapped blocks' fused features (${blocks})`;
  return m.variant === 'global' ? `one decoder on the last block (${blocks})` : `one decoder per tapped block (${blocks} each)`;
}
