import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/**
 * Runs bench/peer.py (the same step in PyTorch) with Debian's python3-torch: one torch thread and
 * OPENBLAS_NUM_THREADS=2, the best setting on a 2-core machine (docs/tfjs.md#pytorch-comparisons). Undefined without PyTorch.
 */
export function benchPeer(o: {
  batch: number;
  seconds: number;
  model: string;
  img: number;
  patch: number;
  device: string;
}): { stepsPerS: number } | undefined {
  const python = ['/usr/bin/python3', 'python3'].find((p) => spawnSync(p, ['-c', 'import torch'], { stdio: 'ignore' }).status === 0);
  if (!python) {
    console.log('peer: PyTorch is not installed (apt-get install python3-torch libopenblas0-pthread); skipped');
    return undefined;
  }
  const script = fileURLToPath(new URL('peer.py', import.meta.url));
  const args = Object.entries(o).flatMap(([k, v]) => [`--${k}`, String(v)]);
  const r = spawnSync(python, [script, ...args], {
    encoding: 'utf8',
    env: { ...process.env, OPENBLAS_NUM_THREADS: '2' },
  });
  const line = r.stdout.trim().split('\n').at(-1) ?? '';
  if (r.status !== 0 || !line.startsWith('{')) {
    console.log(`peer: bench/peer.py failed: ${r.stderr.trim().split('\n').at(-1)}`);
    return undefined;
  }
  console.log(line);
  return JSON.parse(line) as { stepsPerS: number };
}
