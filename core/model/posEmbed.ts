/**
 * Fixed 2-D sin-cos positions on a `g × g` grid with a zero class row (docs/method.md#patch-embedding-and-positions): `[1 + g², W]`,
 * quarters sin(col·ω), cos(col·ω), sin(row·ω), cos(row·ω) with ω_k = 10000^(−k/Q), Q = W/4.
 */
export function sinCosPosEmbed(W: number, g: number): Float32Array {
  const Q = W / 4;
  const out = new Float32Array((1 + g * g) * W);
  for (let i = 0; i < g; i++) {
    for (let j = 0; j < g; j++) {
      const row = out.subarray((1 + i * g + j) * W);
      for (let k = 0; k < Q; k++) {
        const omega = 1 / 10000 ** (k / Q);
        row[k] = Math.sin(j * omega);
        row[Q + k] = Math.cos(j * omega);
        row[2 * Q + k] = Math.sin(i * omega);
        row[3 * Q + k] = Math.cos(i * omega);
      }
    }
  }
  return out;
}

/**
 * A position table `[1 + g², W]` resampled to a `G × G` grid, the class row kept: bicubic as PyTorch's
 * `interpolate(mode='bicubic', align_corners=False)` without antialiasing (MAE's `interpolate_pos_embed`),
 * done separably on the host (tfjs has no bicubic resize): columns first, then rows.
 */
export function resizePosEmbed(table: Float32Array, W: number, g: number, G: number): Float32Array {
  const taps = bicubicTaps(g, G);
  const wide = new Float64Array(g * G * W); // [g rows, G columns, W]
  for (let y = 0; y < g; y++)
    for (let X = 0; X < G; X++)
      for (const [x, w] of taps[X]!) {
        const src = table.subarray((1 + y * g + x) * W, (2 + y * g + x) * W);
        const dst = (y * G + X) * W;
        for (let c = 0; c < W; c++) wide[dst + c]! += w * src[c]!;
      }
  const out = new Float32Array((1 + G * G) * W);
  out.set(table.subarray(0, W));
  const sum = new Float64Array(W);
  for (let Y = 0; Y < G; Y++)
    for (let X = 0; X < G; X++) {
      sum.fill(0);
      for (const [y, w] of taps[Y]!) for (let c = 0; c < W; c++) sum[c]! += w * wide[(y * G + X) * W + c]!;
      out.set(sum, (1 + Y * G + X) * W);
    }
  return out;
}

/**
 * For each of `N` outputs, the 4 source indices (clamped to [0, n)) and weights of PyTorch's cubic
 * convolution (a = −0.75) at source coordinate `(o + 0.5) · n/N − 0.5`.
 */
function bicubicTaps(n: number, N: number): [number, number][][] {
  const A = -0.75;
  const near = (t: number) => ((A + 2) * t - (A + 3)) * t * t + 1; // |t| ≤ 1
  const far = (t: number) => ((A * t - 5 * A) * t + 8 * A) * t - 4 * A; // 1 < |t| < 2
  return Array.from({ length: N }, (_, o) => {
    const src = (n / N) * (o + 0.5) - 0.5;
    const i = Math.floor(src);
    const t = src - i;
    const w = [far(t + 1), near(t), near(1 - t), far(2 - t)];
    return w.map((wk, k) => [Math.min(Math.max(i - 1 + k, 0), n - 1), wk] as [number, number]);
  });
}
