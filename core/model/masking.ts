/**
 * Per-sample random masking as the official `random_masking` (docs/method.md#masking), done on the host: `argsort(noise)` keeps the first `nKeep`
 * patches in noise order. Returns `idsKeep [B, nKeep]` and `mask [B, L]`: 1 = removed (predicted), 0 = visible.
 */
export function randomMasking(noise: Float32Array, B: number, L: number, nKeep: number) {
  const idsKeep = new Int32Array(B * nKeep);
  const mask = new Float32Array(B * L).fill(1);
  for (let b = 0; b < B; b++) {
    const row = noise.subarray(b * L, (b + 1) * L);
    const order = Array.from({ length: L }, (_, n) => n).sort((i, j) => row[i]! - row[j]! || i - j);
    for (let k = 0; k < nKeep; k++) {
      idsKeep[b * nKeep + k] = order[k]!;
      mask[b * L + order[k]!] = 0;
    }
  }
  return { idsKeep, mask };
}

/**
 * The patch mask `[B, g·g]` resampled to a `(s·g)²` prediction grid (docs/method.md#masks-at-each-scale): nearest up-sampling for
 * s ≥ 1, and for s = 0.5 the average of each 2×2 block, giving fractional weights.
 */
export function scaleMask(mask: Float32Array, B: number, g: number, s: number): Float32Array {
  const G = s * g;
  const out = new Float32Array(B * G * G);
  const f = s >= 1 ? s : 1 / s;
  for (let b = 0; b < B; b++) {
    for (let y = 0; y < G; y++) {
      for (let x = 0; x < G; x++) {
        let v = 0;
        if (s >= 1) v = mask[b * g * g + Math.floor(y / f) * g + Math.floor(x / f)]!;
        else for (let dy = 0; dy < f; dy++) for (let dx = 0; dx < f; dx++) v += mask[b * g * g + (y * f + dy) * g + x * f + dx]!;
        out[(b * G + y) * G + x] = s >= 1 ? v : v / (f * f);
      }
    }
  }
  return out;
}
