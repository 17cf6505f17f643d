import * as tf from '@tensorflow/tfjs';
import { existsSync } from 'node:fs';
import { nativeThreads, setNativeGemm } from './native.js';

/** Backends in order of preference: fastest first. */
export const BACKENDS = ['tensorflow-gpu', 'tensorflow', 'wasm', 'cpu'] as const;
export type BackendName = (typeof BACKENDS)[number];

export interface BackendAttempt {
  name: BackendName;
  ok: boolean;
  /** Why it was not chosen: not installed, failed to load, or skipped because a faster one loaded. */
  reason?: string;
}

export interface BackendReport {
  chosen: BackendName;
  tfjsVersion: string;
  threads: number;
  gpu: string;
  attempts: BackendAttempt[];
  /** Set when the user forced the backend with --backend or LOCALMIM_BACKEND. */
  forcedBy?: string;
  /** The native BLAS path under wasm (core/native.ts): what runs, or why it does not. */
  native: string;
}

const NODE_PACKAGE: Partial<Record<BackendName, string>> = {
  'tensorflow-gpu': '@tensorflow/tfjs-node-gpu',
  tensorflow: '@tensorflow/tfjs-node',
};

function describeLoadError(pkg: string, err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (e?.code === 'ERR_MODULE_NOT_FOUND' || e?.code === 'MODULE_NOT_FOUND') {
    if (String(e.message).includes(pkg))
      return `${pkg} is not installed (npm skips this optional package when its libtensorflow download fails)`;
  }
  return `${pkg} failed to load: ${String(e?.message ?? err).split('\n')[0]}`;
}

async function tryBackend(name: BackendName): Promise<string | undefined> {
  try {
    const pkg = NODE_PACKAGE[name];
    if (pkg) {
      await import(pkg).catch((err: unknown) => {
        throw new Error(describeLoadError(pkg, err));
      });
      // Both node packages register the same 'tensorflow' backend; the GPU one only pays with CUDA.
      if (name === 'tensorflow-gpu' && !hasNvidiaDriver()) return 'no NVIDIA driver found (/proc/driver/nvidia missing)';
      if (!(await tf.setBackend('tensorflow'))) return 'tensorflow backend failed to initialise';
      return undefined;
    }
    if (name === 'wasm') await import('@tensorflow/tfjs-backend-wasm');
    if (!(await tf.setBackend(name))) return `${name} backend failed to initialise`;
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

/** Switches tfjs to one named backend, loading it first; returns why it cannot run, if it cannot. */
export const useBackend = tryBackend;

function nativeGemm(): string {
  if (process.env.LOCALMIM_NATIVE === '0') return 'off (LOCALMIM_NATIVE=0)';
  const why = setNativeGemm(true);
  return why ? `off: ${why}` : `BLAS sgemm for every matmul (${nativeThreads() || 'system'} threads)`;
}

function hasNvidiaDriver(): boolean {
  return existsSync('/proc/driver/nvidia/version');
}

function requestedBackend(flag?: string): { name: BackendName; source: string } | undefined {
  const value = flag ?? process.env.LOCALMIM_BACKEND;
  if (!value) return undefined;
  const name = value === 'gpu' ? 'tensorflow-gpu' : value === 'node' ? 'tensorflow' : value;
  if (!(BACKENDS as readonly string[]).includes(name)) {
    throw new Error(`backend: unknown backend "${value}" (choose one of ${BACKENDS.join(', ')}, or gpu / node)`);
  }
  return { name: name as BackendName, source: flag ? '--backend' : 'LOCALMIM_BACKEND' };
}

let current: BackendReport | undefined;

/**
 * Selects the fastest backend that loads (or the one forced by `--backend` / LOCALMIM_BACKEND) and
 * returns a report of every attempt. A forced backend that fails to load is an error, never a silent fallback.
 */
export async function initBackend(flag?: string): Promise<BackendReport> {
  if (current) return current;
  const forced = requestedBackend(flag);
  const attempts: BackendAttempt[] = [];
  let chosen: BackendName | undefined;
  for (const name of BACKENDS) {
    if (chosen) {
      attempts.push({ name, ok: false, reason: `not tried: ${chosen} loaded first` });
      continue;
    }
    if (forced && forced.name !== name) {
      attempts.push({ name, ok: false, reason: `not tried: ${forced.source} asks for ${forced.name}` });
      continue;
    }
    const reason = await tryBackend(name);
    attempts.push({ name, ok: !reason, reason });
    if (!reason) chosen = name;
    else if (forced) throw new Error(`backend: ${forced.source} asks for ${name}, which cannot run: ${reason}`);
  }
  if (!chosen) throw new Error('backend: no tfjs backend could be loaded');
  current = {
    native: chosen === 'wasm' ? nativeGemm() : `not used on ${chosen}`,
    chosen,
    tfjsVersion: tf.version.tfjs,
    threads: await threadCount(chosen),
    gpu: gpuStatus(chosen),
    attempts,
    forcedBy: forced?.source,
  };
  return current;
}

async function threadCount(name: BackendName): Promise<number> {
  if (name !== 'wasm') return name === 'cpu' ? 1 : (await import('node:os')).availableParallelism();
  const wasm = await import('@tensorflow/tfjs-backend-wasm');
  return wasm.getThreadsCount();
}

function gpuStatus(name: BackendName): string {
  if (name === 'tensorflow-gpu') return 'CUDA via tfjs-node-gpu';
  return hasNvidiaDriver() ? 'NVIDIA driver present, but tfjs-node-gpu is not running' : 'no GPU (no NVIDIA driver)';
}

/** One line for logs and event streams: which backend runs, and why the faster ones do not. */
export function describeBackend(r: BackendReport): string {
  const skipped = r.attempts.filter((a) => !a.ok && a.name !== r.chosen && !a.reason?.startsWith('not tried: ' + r.chosen));
  const why = skipped.map((a) => `${a.name}: ${a.reason}`).join('; ');
  const native = r.chosen === 'wasm' ? `, native ${r.native}` : '';
  return `backend ${r.chosen} (tfjs ${r.tfjsVersion}, ${r.threads} thread${r.threads === 1 ? '' : 's'}${native})${why ? ` — ${why}` : ''}`;
}
