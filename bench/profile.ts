// npm run bench -- --only profile: where the default step's time goes on the native wasm path, by op class, against a
// FLOP-bound ideal (the step's multiply-adds at the rate our sgemm reaches on one large product here). tf.profile times
// each kernel as it runs (so the step runs a little slower than unprofiled); the shares are the figures to read.
import * as tf from '@tensorflow/tfjs';
import { nativeAddon } from '../core/native.js';

interface OpClass {
  ms: number;
  calls: number;
  flops: number;
}

const product = (s: number[]) => s.reduce((a, b) => a * b, 1);

/** Floating-point operations of a kernel from its shapes: the products' 2·M·N·K; elementwise work counts as none. */
function flopsOf(name: string, inputs: number[][], outputs: number[][]): number {
  const out = outputs[0] ?? [];
  if (name === 'BatchMatMul') {
    // op(A) is [M, K] whether or not A is stored transposed: K is A's other dimension.
    const a = inputs[0]!;
    const K = a.at(-2) === out.at(-2) ? a.at(-1)! : a.at(-2)!;
    return 2 * product(out) * K;
  }
  if (name === 'LocalmimLinear') return 2 * product(out) * inputs[0]!.at(-1)!;
  // Attention, out [B·T, D] and probs [B·heads, T, T]: scores and probabilities × values, 2·B·T²·D each; its gradient twice that.
  if (name === 'LocalmimAttention') return 4 * out[0]! * outputs[1]![1]! * out[1]!;
  if (name === 'LocalmimAttentionGrad') return 8 * inputs[0]![0]! * inputs[2]![1]! * inputs[0]![1]!;
  return 0;
}

/** Per op class, its milliseconds, calls and FLOPs over one step (the mean of `every` steps, profiled after a warm-up). */
export async function profileStep(step: () => Promise<void>, every: number): Promise<Map<string, OpClass>> {
  for (let i = 0; i < every; i++) await step();
  const info = await tf.profile(async () => {
    for (let i = 0; i < every; i++) await step();
  });
  const classes = new Map<string, OpClass>();
  // customGrad's 'forward' wraps kernels that are listed on their own.
  for (const k of info.kernels.filter((k) => k.name !== 'forward')) {
    const ms = await k.kernelTimeMs;
    const c = classes.get(k.name) ?? { ms: 0, calls: 0, flops: 0 };
    c.ms += typeof ms === 'number' ? ms / every : 0;
    c.calls += 1 / every;
    c.flops += flopsOf(k.name, k.inputShapes, k.outputShapes) / every;
    classes.set(k.name, c);
  }
  return classes;
}

/** Our sgemm's rate on a large square product here, in FLOP/ms: the ideal's speed. */
function peakFlopsPerMs(): number {
  const n = 1024;
  const [a, b, c] = [new Float32Array(n * n).fill(1), new Float32Array(n * n).fill(1), new Float32Array(n * n)];
  let best = Infinity;
  for (let r = 0; r < 5; r++) {
    const t0 = performance.now();
    nativeAddon()!.gemm(false, false, 1, n, n, n, a, b, c, false, false);
    best = Math.min(best, performance.now() - t0);
  }
  return (2 * n ** 3) / best;
}

export function printProfile(classes: Map<string, OpClass>): void {
  const peak = peakFlopsPerMs();
  const rows = [...classes].sort((x, y) => y[1].ms - x[1].ms);
  const total = rows.reduce((s, [, c]) => s + c.ms, 0);
  const flops = rows.reduce((s, [, c]) => s + c.flops, 0);
  console.log(`\nstep profile (wasm, native): ${total.toFixed(0)} ms profiled; ${(flops / 1e9).toFixed(1)} GFLOP in products;`);
  console.log(
    `ideal at our sgemm's ${(peak / 1e6).toFixed(0)} GFLOP/s: ${(flops / peak).toFixed(0)} ms (${((100 * flops) / peak / total).toFixed(0)} % of the step)`,
  );
  console.log('op                          ms/step   share   calls   GFLOP   GFLOP/s   ideal ms   over ideal ms');
  for (const [name, c] of rows) {
    const ideal = c.flops / peak;
    console.log(
      `${name.padEnd(26)} ${c.ms.toFixed(1).padStart(9)} ${((100 * c.ms) / total).toFixed(1).padStart(6)}% ${c.calls.toFixed(0).padStart(7)} ${(c.flops / 1e9).toFixed(2).padStart(7)} ${(c.flops ? c.flops / c.ms / 1e6 : 0).toFixed(0).padStart(9)} ${ideal.toFixed(1).padStart(10)} ${(c.ms - ideal).toFixed(1).padStart(15)}`,
    );
  }
  for (const [op, c] of rows)
    console.log(
      JSON.stringify({
        bench: 'profile',
        op,
        msPerStep: +c.ms.toFixed(2),
        share: +(c.ms / total).toFixed(4),
        gflop: +(c.flops / 1e9).toFixed(3),
        idealMs: +(c.flops / peak).toFixed(2),
      }),
    );
}
