import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export interface PeerResult {
  stepsPerS: number;
  peakRssMB: number;
  torchThreads: number;
  blasThreads: number;
  /** The library whose sgemm torch calls. */
  blas: string;
}

/**
 * Runs bench/peer.py (the same step in PyTorch) with Debian's python3-torch under both thread settings of a 2-core
 * machine, 1 torch thread × 2 OpenBLAS threads and 2 × 1 (docs/tfjs.md#pytorch-comparisons), and returns the
 * faster. Undefined without PyTorch.
 */
export function benchPeer(o: {
  batch: number;
  seconds: number;
  model: string;
  img: number;
  patch: number;
  device: string;
}): PeerResult | undefined {
  const python = ['/usr/bin/python3', 'python3'].find((p) => spawnSync(p, ['-c', 'import torch'], { stdio: 'ignore' }).status === 0);
  if (!python) {
    console.log('peer: PyTorch is not installed (apt-get install python3-torch libopenblas0-pthread); skipped');
    return undefined;
  }
  const script = fileURLToPath(new URL('peer.py', import.meta.url));
  const args = Object.entries(o).flatMap(([k, v]) => [`--${k}`, String(v)]);
  const runs: PeerResult[] = [];
  for (const [torchThreads, blasThreads] of [
    [1, 2],
    [2, 1],
  ] as const) {
    const r = spawnSync(python, [script, ...args, '--torch-threads', String(torchThreads)], {
      encoding: 'utf8',
      env: { ...process.env, OPENBLAS_NUM_THREADS: String(blasThreads) },
    });
    const line = r.stdout.trim().split('\n').at(-1) ?? '';
    if (r.status !== 0 || !line.startsWith('{')) {
      // Its last line of stderr says why, e.g. the reference BLAS it refuses to compare against.
      console.log(`peer: skipped: ${r.stderr.trim().split('\n').at(-1)}`);
      return undefined;
    }
    console.log(line.replace('}', `, "blasThreads": ${blasThreads}}`));
    runs.push({ ...(JSON.parse(line) as PeerResult), blasThreads });
  }
  return runs.reduce((a, b) => (b.stepsPerS > a.stepsPerS ? b : a));
}
