import * as tf from '@tensorflow/tfjs';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { setFreeingBackprop } from './backprop.js';
import { describeGemm, routeGemm } from './blas.js';
import { nativeAddon, nativeKernel, nativeOr, nativeThreads, setNativeGemm } from './native.js';
import { describeAdapter, openAdapter, type Adapter } from './webgpu.js';

/** Backends in order of preference: fastest first. */
export const BACKENDS = ['tensorflow-gpu', 'webgpu', 'tensorflow', 'wasm', 'cpu'] as const;
export type BackendName = (typeof BACKENDS)[number];

/**
 * How many training steps to queue between loss readbacks: a readback drains a GPU's queue and leaves it idle
 * while the next step is recorded; a CPU backend has computed the loss by the time the step returns.
 */
export const lossReadEvery = (name: string): number => (name === 'webgpu' || name === 'tensorflow-gpu' ? 10 : 1);

/**
 * Effective training throughput per compute path in GFLOP/s, for run estimates and for how much slower a fallback
 * is (docs/tfjs.md#throughput: the wasm paths measured here; webgpu a rough figure for a mid-range GPU).
 */
export const THROUGHPUT_GFLOPS: Record<string, number> = {
  'tensorflow-gpu': 2000,
  webgpu: 300,
  tensorflow: 60,
  'wasm-native': 60,
  wasm: 6,
  cpu: 0.3,
};

/** The path a run's step takes on this backend: wasm with or without the native addon. */
export const computePath = (backend: string) => (backend === 'wasm' ? nativeOr('wasm-native', backend) : backend);

/** A CPU run that could be several times faster here: by how much, why, and what to do. */
export interface SlowPath {
  factor: number;
  why: string;
  fix: string;
}

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
  /** The native addon under wasm (core/native.ts): what runs, or why it does not. */
  native: string;
  /** The WebGPU adapter, when webgpu runs. */
  adapter?: Adapter;
  /** Set when training runs on a CPU path slower than the native one. */
  slow?: SlowPath;
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

let adapter: Adapter | undefined;

async function tryBackend(name: BackendName, forced = false): Promise<string | undefined> {
  setFreeingBackprop(true);
  try {
    if (name === 'webgpu') return await tryWebgpu(forced);
    const pkg = NODE_PACKAGE[name];
    if (pkg) {
      await import(pkg).catch((err: unknown) => {
        throw new Error(describeLoadError(pkg, err));
      });
      // Both node packages register the same 'tensorflow' backend; the GPU one only pays with CUDA.
      if (name === 'tensorflow-gpu' && !hasNvidiaDriver()) return 'no NVIDIA driver found (/proc/driver/nvidia missing)';
      const missing = name === 'tensorflow-gpu' ? missingCudaLibraries() : [];
      // Without them TensorFlow quietly runs on the CPU: that is the tensorflow backend, not this one.
      if (missing.length)
        return `${missing.join(', ')} not found: tfjs-node-gpu 4.22 (libtensorflow 2.9) needs CUDA 11.2 and cuDNN 8.1, else it runs on the CPU`;
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

/** A hardware adapter, or a software one only when asked for by name: emulated, it is slower than the CPU paths. */
async function tryWebgpu(forced: boolean): Promise<string | undefined> {
  const a = await openAdapter();
  if (typeof a === 'string') return a;
  if (a.software && !forced) return `only a software adapter (${describeAdapter(a)}): slower than the CPU; --backend webgpu uses it anyway`;
  await import('@tensorflow/tfjs-backend-webgpu').catch((err: unknown) => {
    throw new Error(describeLoadError('@tensorflow/tfjs-backend-webgpu', err));
  });
  if (!(await tf.setBackend('webgpu'))) return 'webgpu backend failed to initialise';
  adapter = a;
  return undefined;
}

/** The WebGPU adapter in use, when webgpu runs: its limits bound what a run may allocate. */
export const activeAdapter = (): Adapter | undefined => (tf.getBackend() === 'webgpu' ? adapter : undefined);

/** Switches tfjs to one named backend, loading it first; returns why it cannot run, if it cannot. */
export const useBackend = (name: BackendName) => tryBackend(name, true);

function nativeGemm(): string {
  if (process.env.LOCALMIM_NATIVE === '0') return 'off (LOCALMIM_NATIVE=0)';
  const why = setNativeGemm(true);
  if (why) return `off: ${why}`;
  const gemm = describeGemm(routeGemm(nativeAddon()!));
  return `our sgemm (${nativeKernel()}) and fused kernels on ${nativeThreads()} thread${nativeThreads() === 1 ? '' : 's'}; ${gemm}`;
}

const COMPILER: Partial<Record<NodeJS.Platform, string>> = {
  linux: 'a C compiler (Debian/Ubuntu: sudo apt install build-essential; Fedora: sudo dnf install gcc make)',
  darwin: "Xcode's command line tools (xcode-select --install)",
  win32: 'Visual Studio Build Tools with "Desktop development with C++"',
};

/** Why this CPU path is slower than the native one, or undefined when it is not (GPU backends, native on). */
function slowPath(chosen: BackendName, native: string, attempts: BackendAttempt[]): SlowPath | undefined {
  if (chosen !== 'wasm' && chosen !== 'cpu') return undefined;
  if (computePath(chosen) === 'wasm-native') return undefined;
  const factor = Math.round(THROUGHPUT_GFLOPS['wasm-native']! / THROUGHPUT_GFLOPS[chosen]!);
  if (chosen === 'cpu') {
    const wasm = attempts.find((a) => a.name === 'wasm')?.reason;
    return {
      factor,
      why: `the cpu backend runs: ${wasm ?? 'the wasm backend is not used'}`,
      fix: 'run with the wasm backend (--backend wasm)',
    };
  }
  if (process.env.LOCALMIM_NATIVE === '0')
    return { factor, why: 'LOCALMIM_NATIVE=0 turns the native addon off', fix: 'unset LOCALMIM_NATIVE' };
  return {
    factor,
    why: native.replace(/^off: /, ''),
    fix: `install ${COMPILER[process.platform] ?? 'a C compiler'}, then run npm rebuild in the app's folder`,
  };
}

/** One line: "training runs N× slower than it could here: why; fix: …". */
export const describeSlowPath = (s: SlowPath) => `training runs about ${s.factor}× slower than it could here: ${s.why}; fix: ${s.fix}`;

/** The CUDA runtime libraries libtensorflow 2.9 loads, not found in the linker cache or LD_LIBRARY_PATH. */
export function missingCudaLibraries(cache = linkerCache(), paths = process.env.LD_LIBRARY_PATH ?? ''): string[] {
  const dirs = paths.split(':').filter(Boolean);
  return CUDA_LIBRARIES.filter((lib) => !cache.includes(lib) && !dirs.some((d) => existsSync(`${d}/${lib}`)));
}

const CUDA_LIBRARIES = ['libcudart.so.11.0', 'libcublas.so.11', 'libcudnn.so.8'];

function linkerCache(): string {
  try {
    return execFileSync('/sbin/ldconfig', ['-p'], { encoding: 'utf8' });
  } catch {
    return '';
  }
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
    const reason = await tryBackend(name, !!forced);
    attempts.push({ name, ok: !reason, reason });
    if (!reason) chosen = name;
    else if (forced) throw new Error(`backend: ${forced.source} asks for ${name}, which cannot run: ${reason}`);
  }
  if (!chosen) throw new Error('backend: no tfjs backend could be loaded');
  const native = chosen === 'wasm' ? nativeGemm() : `not used on ${chosen}`;
  current = {
    native,
    chosen,
    tfjsVersion: tf.version.tfjs,
    threads: await threadCount(chosen),
    gpu: gpuStatus(chosen),
    attempts,
    forcedBy: forced?.source,
    ...(chosen === 'webgpu' && { adapter }),
  };
  const slow = slowPath(chosen, native, attempts);
  if (slow) current.slow = slow;
  return current;
}

async function threadCount(name: BackendName): Promise<number> {
  if (name !== 'wasm') return name === 'cpu' || name === 'webgpu' ? 1 : (await import('node:os')).availableParallelism();
  const wasm = await import('@tensorflow/tfjs-backend-wasm');
  return wasm.getThreadsCount();
}

function gpuStatus(name: BackendName): string {
  if (name === 'tensorflow-gpu') return 'CUDA via tfjs-node-gpu';
  if (name === 'webgpu' && adapter) return `WebGPU: ${describeAdapter(adapter)}`;
  return hasNvidiaDriver() ? 'NVIDIA driver present, but tfjs-node-gpu is not running' : 'no GPU (no NVIDIA driver)';
}

/** One line for logs and event streams: which backend runs, and why the faster ones do not. */
export function describeBackend(r: BackendReport): string {
  const skipped = r.attempts.filter((a) => !a.ok && a.name !== r.chosen && !a.reason?.startsWith('not tried: ' + r.chosen));
  const why = skipped.map((a) => `${a.name}: ${a.reason}`).join('; ');
  const native = r.chosen === 'wasm' ? `, native ${r.native}` : '';
  const slow = r.slow ? ` — ${describeSlowPath(r.slow)}` : '';
  return `backend ${r.chosen} (tfjs ${r.tfjsVersion}, ${r.threads} thread${r.threads === 1 ? '' : 's'}${native})${why ? ` — ${why}` : ''}${slow}`;
}
