// Float64 references for the products tests compare the native kernels (and a system BLAS) against.

export interface Product {
  ba: number;
  bb: number;
  M: number;
  N: number;
  K: number;
  ta: boolean;
  tb: boolean;
}
/** op(a)·op(b) per batch item in float64, as [batch, M, N]. */
export function product(a: Float32Array, b: Float32Array, { ba, bb, M, N, K, ta, tb }: Product): Float64Array {
  const batch = Math.max(ba, bb);
  const out = new Float64Array(batch * M * N);
  for (let n = 0; n < batch; n++) {
    const [oa, ob] = [(ba > 1 ? n : 0) * M * K, (bb > 1 ? n : 0) * K * N];
    for (let i = 0; i < M; i++)
      for (let j = 0; j < N; j++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += a[oa + (ta ? k * M + i : i * K + k)]! * b[ob + (tb ? j * K + k : k * N + j)]!;
        out[(n * M + i) * N + j] = s;
      }
  }
  return out;
}

/** ‖got − ref‖ / ‖ref‖. */
export function relativeError(got: ArrayLike<number>, ref: ArrayLike<number>): number {
  let [diff, norm] = [0, 0];
  for (let i = 0; i < ref.length; i++) {
    diff += (got[i]! - ref[i]!) ** 2;
    norm += ref[i]! ** 2;
  }
  return Math.sqrt(diff / Math.max(norm, 1e-30));
}
