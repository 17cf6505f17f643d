// npm run bench -- --only gemm: native/sgemm.c against the system's BLAS (OpenBLAS; Accelerate on macOS) where one
// is installed, on the GEMM shapes of the default pretraining step (vit-tiny, 64 px, patch 8, batch 32, four
// decoders: traced with tf.profile), each in GFLOP/s, and over one step's worth of them, weighted by their calls.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';

/** [transA, transB, M, N, K, calls per step]. */
type Shape = [0 | 1, 0 | 1, number, number, number, number];
const STEP: Shape[] = [
  // Encoder, 12 blocks over 32 × 17 visible tokens: qkv, proj, fc1, fc2 forward, then the inputs' and weights' gradients.
  [0, 1, 544, 576, 192, 12],
  [0, 1, 544, 192, 192, 12],
  [0, 1, 544, 768, 192, 12],
  [0, 1, 544, 192, 768, 12],
  [0, 0, 544, 192, 576, 12],
  [0, 0, 544, 192, 192, 12],
  [0, 0, 544, 192, 768, 12],
  [0, 0, 544, 768, 192, 12],
  [1, 0, 576, 192, 544, 12],
  [1, 0, 192, 192, 544, 12],
  [1, 0, 768, 192, 544, 12],
  [1, 0, 192, 768, 544, 12],
  // Four decoders over 32 × 65 tokens at width 256.
  [0, 1, 2080, 768, 256, 4],
  [0, 1, 2080, 256, 256, 4],
  [0, 1, 2080, 1024, 256, 4],
  [0, 1, 2080, 256, 1024, 4],
  [0, 0, 2080, 256, 768, 4],
  [0, 0, 2080, 256, 256, 4],
  [0, 0, 2080, 256, 1024, 4],
  [0, 0, 2080, 1024, 256, 4],
  [1, 0, 768, 256, 2080, 4],
  [1, 0, 256, 256, 2080, 4],
  [1, 0, 256, 1024, 2080, 4],
  [1, 0, 1024, 256, 2080, 4],
  // Prediction heads (the 2×2 transposed convolutions as products) and the patch embedding.
  [0, 0, 2048, 512, 256, 2],
  [1, 0, 256, 512, 2048, 2],
  [0, 1, 2048, 256, 512, 2],
  [0, 0, 8192, 256, 128, 1],
  [1, 0, 128, 256, 8192, 1],
  [0, 1, 8192, 128, 256, 1],
  [0, 1, 32768, 27, 64, 1],
  [1, 0, 27, 64, 32768, 1],
  // One head of attention (the fused kernel runs these on one thread each): scores, then probabilities × values.
  [0, 1, 65, 65, 64, 512],
  [0, 0, 65, 64, 65, 512],
  [0, 1, 17, 17, 64, 1152],
  [0, 0, 17, 64, 17, 1152],
];

const CBLAS_HEADERS = [
  '/usr/include/x86_64-linux-gnu/openblas-pthread',
  '/usr/include/aarch64-linux-gnu/openblas-pthread',
  '/usr/include/openblas',
];

/** The flags that link the system's BLAS, or why there is none. */
function systemBlas(): string[] | string {
  if (process.platform === 'darwin') return ['-DWITH_CBLAS', '-DACCELERATE_NEW_LAPACK', '-framework', 'Accelerate'];
  const dir = CBLAS_HEADERS.find((d) => existsSync(`${d}/cblas.h`));
  return dir
    ? ['-DWITH_CBLAS', `-I${dir}`, '-lopenblas']
    : 'OpenBLAS is not installed (Debian: apt install libopenblas-dev): our figures only';
}

interface Timed {
  shape: string;
  gflops: number;
  maxRelDiff?: number;
}

export function benchGemm(seconds: number): void {
  const blas = systemBlas();
  mkdirSync('build', { recursive: true });
  const exe = 'build/bench-gemm';
  // The addon's own flags (binding.gyp), so that this measures the code training runs.
  const flags = ['-O3', '-std=gnu11', '-fno-math-errno', '-fno-trapping-math', '-ffp-contract=off'];
  const sources = ['bench/gemm.c', 'native/sgemm.c', 'native/pool.c'];
  execFileSync(process.env.CC ?? 'cc', [...flags, ...sources, ...(typeof blas === 'string' ? [] : blas), '-lpthread', '-lm', '-o', exe]);
  if (typeof blas === 'string') console.log(`gemm: ${blas}`);
  const args = STEP.map(([ta, tb, M, N, K]) => `${ta},${tb},${M},${N},${K}`);
  const time = (lib: string) => {
    const lines = execFileSync(exe, [lib, String(seconds / STEP.length / 2), ...args], { encoding: 'utf8' })
      .trim()
      .split('\n');
    return { head: JSON.parse(lines[0]!) as { kernel: string; threads: number }, rows: lines.slice(1).map((l) => JSON.parse(l) as Timed) };
  };
  const { head, rows: ours } = time('ours');
  const theirs = typeof blas === 'string' ? [] : time('blas').rows;
  console.log(`\nsgemm: our ${head.kernel} kernel on ${head.threads} threads${typeof blas === 'string' ? '' : ' against the system BLAS'}`);
  console.log('ta tb     M     N     K  calls     ours GFLOP/s   BLAS GFLOP/s   ratio');
  let [ourTime, blasTime] = [0, 0];
  ours.forEach((r, i) => {
    const [ta, tb, M, N, K, calls] = STEP[i]!;
    const flops = 2 * M * N * K * calls;
    const blasRate = theirs[i]?.gflops;
    ourTime += flops / r.gflops;
    if (blasRate) blasTime += flops / blasRate;
    const ratio = blasRate ? (r.gflops / blasRate).toFixed(2) : '';
    console.log(
      `${ta}  ${tb} ${String(M).padStart(5)} ${String(N).padStart(5)} ${String(K).padStart(5)} ${String(calls).padStart(6)} ${r.gflops.toFixed(1).padStart(16)} ${(blasRate?.toFixed(1) ?? '').padStart(14)} ${ratio.padStart(7)}`,
    );
  });
  const worst = Math.max(0, ...theirs.map((r) => r.maxRelDiff ?? 0));
  const summary = { bench: 'gemm', kernel: head.kernel, threads: head.threads, stepGemmMs: +(ourTime / 1e6).toFixed(1) };
  console.log(
    JSON.stringify(
      blasTime
        ? { ...summary, blasStepGemmMs: +(blasTime / 1e6).toFixed(1), ratio: +(blasTime / ourTime).toFixed(3), maxRelDiff: worst }
        : summary,
    ),
  );
}
