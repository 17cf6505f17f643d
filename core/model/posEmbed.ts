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
