// Bundles Electron's main process, preload and job entry with esbuild (shipped inside vite's dependencies):
// main and the job process as ESM with node_modules external; the preload as CommonJS, as a sandboxed
// preload must be.
import { build } from 'esbuild';
import { cpSync } from 'node:fs';

const common = { bundle: true, platform: 'node', target: 'node20', sourcemap: true, logLevel: 'warning' };
await build({
  ...common,
  entryPoints: { main: 'main/main.ts', 'job-entry': 'main/job-entry.ts', 'service-host-entry': 'main/service-host-entry.ts' },
  outdir: 'dist/main',
  format: 'esm',
  packages: 'external',
  outExtension: { '.js': '.js' },
});
await build({
  ...common,
  entryPoints: { preload: 'main/preload.ts' },
  outdir: 'dist/main',
  format: 'cjs',
  external: ['electron'],
  outExtension: { '.js': '.cjs' },
});
// The torch engine (train.py and its package), which core/engine.ts finds beside the bundle that imports it.
cpSync('core/torch', 'dist/main/torch', { recursive: true, filter: (src) => !src.includes('__pycache__') });
