import { cpus } from 'node:os';
import { existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { writeAtomic } from './atomic.js';
import { homeDir } from './home.js';
import type { Addon } from './native.js';

// The fastest BLAS each machine has, never required: the addon opens a system BLAS if one is installed (native/blas.c,
// dlopen, no link-time dependency), times it against our sgemm on the training step's product shapes once per
// machine (cached in the data folder), and sends each transpose mode to the faster. LOCALMIM_GEMM=own|system forces
// one; LOCALMIM_BLAS=PATH names the library to try first.

/** A transpose mode of C = op(A)·op(B): the step's Linear forward is NT, its input gradient NN, its weight gradient TN. */
export type GemmMode = 'NN' | 'NT' | 'TN' | 'TT';
const MODES: GemmMode[] = ['NN', 'NT', 'TN', 'TT'];
const flags = (mode: GemmMode) => [mode[0] === 'T', mode[1] === 'T'] as const;

export interface GemmRoute {
  mode: GemmMode;
  system: boolean;
  /** Our sgemm's time over the system BLAS's on the mode's shapes (above 1: the system BLAS is faster); null when forced. */
  ratio: number | null;
}

export interface GemmReport {
  /** The system BLAS opened, if any. */
  blas?: string;
  routes: GemmRoute[];
  /** What chose the routes: the measurement, its cache, LOCALMIM_GEMM, or that no system BLAS is here. */
  source: 'measured' | 'cached' | 'forced' | 'none';
}

/** Where a system BLAS may be: LOCALMIM_BLAS, then the platform's usual libraries (never the reference BLAS). */
export function blasCandidates(platform = process.platform, env = process.env): string[] {
  const usual: Partial<Record<NodeJS.Platform, string[]>> = {
    darwin: ['/System/Library/Frameworks/Accelerate.framework/Accelerate'],
    linux: ['libopenblas.so.0', 'libopenblas.so', 'libmkl_rt.so.2', 'libmkl_rt.so', 'libblis.so.4'],
    win32: ['libopenblas.dll', 'openblas.dll', 'mkl_rt.2.dll', 'mkl_rt.dll'],
  };
  return [...(env.LOCALMIM_BLAS ? [env.LOCALMIM_BLAS] : []), ...(usual[platform] ?? [])];
}

/** Opens the first system BLAS there is, and routes each mode as LOCALMIM_GEMM, the cache or a measurement says. */
export function routeGemm(addon: Addon, env = process.env): GemmReport {
  const forced = env.LOCALMIM_GEMM || undefined;
  if (forced !== undefined && forced !== 'own' && forced !== 'system')
    throw new Error(`LOCALMIM_GEMM: expected own or system, got "${forced}"`);
  const own = MODES.map((mode) => ({ mode, system: false, ratio: null }));
  if (forced === 'own') return apply(addon, { routes: own, source: 'forced' });
  const candidates = blasCandidates(process.platform, env);
  if (!addon.blasPath()) candidates.find((path) => addon.openBlas(path));
  const blas = addon.blasPath();
  if (!blas) {
    if (forced === 'system') throw new Error(`LOCALMIM_GEMM=system: no system BLAS found (tried ${candidates.join(', ')})`);
    return apply(addon, { routes: own, source: 'none' });
  }
  if (forced === 'system')
    return apply(addon, { blas, routes: MODES.map((mode) => ({ mode, system: true, ratio: null })), source: 'forced' });
  const file = join(homeDir(), 'gemm-routes.json');
  const key = machineKey(addon, blas);
  const cached = readCache(file, key);
  if (cached) return apply(addon, { blas, routes: cached, source: 'cached' });
  const routes = MODES.map((mode) => {
    const ratio = measure(addon, mode);
    return { mode, system: ratio > 1, ratio };
  });
  mkdirSync(homeDir(), { recursive: true });
  writeAtomic(file, JSON.stringify({ key, routes }, null, 2));
  return apply(addon, { blas, routes, source: 'measured' });
}

function apply(addon: Addon, report: GemmReport): GemmReport {
  for (const r of report.routes) addon.routeGemm(...flags(r.mode), r.system);
  return report;
}

/** One clause for doctor and the backend badge: which kernel runs each mode, and by how much. */
export function describeGemm(r: GemmReport): string {
  const by = (system: boolean) =>
    r.routes
      .filter((x) => x.system === system)
      .map((x) => (x.ratio === null ? x.mode : `${x.mode} ${x.ratio.toFixed(2)}×`))
      .join(', ');
  if (r.source === 'none') return 'GEMM ours (no system BLAS found)';
  if (r.source === 'forced') return r.blas ? `GEMM ${r.blas} for all modes (LOCALMIM_GEMM=system)` : 'GEMM ours (LOCALMIM_GEMM=own)';
  const [system, ours] = [by(true), by(false)];
  return `GEMM ${[system && `${r.blas} for ${system}`, ours && `ours for ${ours}`].filter(Boolean).join('; ')} (our time / theirs, ${r.source})`;
}

/** The machine, the kernels and the library: when any changes, the measurement is taken again. */
function machineKey(addon: Addon, blas: string): string {
  const lib = existsSync(blas) ? statSync(blas) : undefined;
  return JSON.stringify([cpus()[0]?.model, addon.threads(), addon.kernel(), blas, lib?.size, lib?.mtimeMs]);
}

function readCache(file: string, key: string): GemmRoute[] | undefined {
  try {
    const saved = JSON.parse(readFileSync(file, 'utf8')) as { key: string; routes: GemmRoute[] };
    return saved.key === key ? saved.routes : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Products of each mode at the default step's sizes (vit-tiny at 64 px, patch 8, batch 32: 544 visible tokens of
 * 192 features and their 768-wide MLP; the decoders' 2,048 tokens of 256 and 1,024): M, N, K.
 */
const SHAPES: Record<GemmMode, [number, number, number][]> = {
  NT: [
    [544, 768, 192],
    [2048, 1024, 256],
  ],
  NN: [
    [544, 192, 768],
    [2048, 256, 1024],
  ],
  TN: [
    [768, 192, 544],
    [1024, 256, 2048],
  ],
  TT: [
    [192, 544, 768],
    [256, 2048, 1024],
  ],
};

/**
 * Our time over the system BLAS's on one mode's shapes, each the best of a few calls; each kernel's calls together, so
 * that one's threads winding down do not slow the other's.
 */
function measure(addon: Addon, mode: GemmMode): number {
  const [ta, tb] = flags(mode);
  const total = { own: 0, system: 0 };
  for (const [M, N, K] of SHAPES[mode]) {
    const [a, b, c] = [
      Float32Array.from({ length: M * K }, Math.random),
      Float32Array.from({ length: K * N }, Math.random),
      new Float32Array(M * N),
    ];
    const best = { own: Infinity, system: Infinity };
    for (const side of ['own', 'system'] as const) {
      addon.routeGemm(ta, tb, side === 'system');
      for (let rep = 0; rep < 5; rep++) {
        const t0 = process.hrtime.bigint();
        addon.gemm(ta, tb, 1, M, N, K, a, b, c, false, false);
        best[side] = Math.min(best[side], Number(process.hrtime.bigint() - t0));
      }
    }
    total.own += best.own;
    total.system += best.system;
  }
  addon.routeGemm(ta, tb, false);
  return total.own / total.system;
}
