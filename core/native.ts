import * as tf from '@tensorflow/tfjs';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { createRequire } from 'node:module';

// The optional native compute path (built from native/blas.c at install time against the system's BLAS):
// tfjs-wasm's BatchMatMul kernel replaced by OpenBLAS/Accelerate sgemm on the wasm heap itself, every
// transpose mode included, on all cores. When the addon cannot build or load, plain wasm runs and the
// reason is reported.

interface Blas {
  gemm(
    ta: boolean,
    tb: boolean,
    batch: number,
    M: number,
    N: number,
    K: number,
    a: Float32Array,
    b: Float32Array,
    c: Float32Array,
    aBatched: boolean,
    bBatched: boolean,
  ): void;
  transpose(x: Float32Array, shape: number[], perm: number[], out: Float32Array): void;
  threads(): number;
}

let blas: Blas | undefined;
let loadError: string | undefined;
const originals = new Map<string, tf.KernelConfig>();

function load(): Blas | undefined {
  if (blas || loadError) return blas;
  try {
    blas = createRequire(import.meta.url)('../build/Release/localmim_blas.node') as Blas;
  } catch (err) {
    loadError = `native BLAS addon not built (${String((err as Error).message).split('\n')[0]}); install libopenblas-dev and run npm rebuild`;
  }
  return blas;
}

/** Why the native path is off, or undefined when it is on. */
export const nativeStatus = () => (active ? undefined : (loadError ?? 'off'));
let active = false;
export const nativeActive = () => active;
export const nativeThreads = () => blas?.threads() ?? 0;

/** Turns the native kernels (BatchMatMul, Transpose) on for the wasm backend (returns why not, if it cannot), or off. */
export function setNativeGemm(on: boolean): string | undefined {
  if (on === active) return undefined;
  const kernels: [string, tf.KernelFunc][] = [
    ['BatchMatMul', (args) => batchMatMul(blas!, args as never)],
    ['Transpose', (args) => transpose(blas!, args as never)],
  ];
  if (on && !load()) return loadError;
  for (const [name, kernelFunc] of kernels) {
    const current = tf.getKernel(name, 'wasm');
    if (!current) return 'the wasm backend is not loaded';
    if (!originals.has(name)) originals.set(name, current);
    tf.unregisterKernel(name, 'wasm');
    tf.registerKernel(on ? { kernelName: name, backendName: 'wasm', kernelFunc } : originals.get(name)!);
  }
  active = on;
  return undefined;
}

type WasmArgs<I, A> = { inputs: I; attrs: A; backend: BackendWasm };
const heapView = (backend: BackendWasm, t: tf.TensorInfo, n: number) =>
  new Float32Array((backend.wasm as unknown as { HEAPU8: Uint8Array }).HEAPU8.buffer, backend.dataIdMap.get(t.dataId)!.memoryOffset, n);
const size = (s: number[]) => s.reduce((x, y) => x * y, 1);

function transpose(lib: Blas, args: WasmArgs<{ x: tf.TensorInfo }, { perm: number[] }>) {
  const { inputs, attrs, backend } = args;
  if (inputs.x.dtype !== 'float32' || inputs.x.shape.length > 6) return originals.get('Transpose')!.kernelFunc(args as never);
  const out = backend.makeOutput(
    attrs.perm.map((p) => inputs.x.shape[p]!),
    'float32',
  );
  const n = size(inputs.x.shape);
  if (n) lib.transpose(heapView(backend, inputs.x, n), inputs.x.shape, attrs.perm, heapView(backend, out, n));
  return out;
}

function batchMatMul(lib: Blas, args: WasmArgs<{ a: tf.TensorInfo; b: tf.TensorInfo }, { transposeA: boolean; transposeB: boolean }>) {
  const { inputs, attrs, backend } = args;
  const { a, b } = inputs;
  const { transposeA: ta, transposeB: tb } = attrs;
  const outer = (s: number[]) => s.slice(0, -2);
  const [batchA, batchB] = [size(outer(a.shape)), size(outer(b.shape))];
  // Only equal batches or a shared operand map onto strided sgemm; anything else keeps tfjs's kernel.
  if (batchA !== batchB && batchA !== 1 && batchB !== 1) return originals.get('BatchMatMul')!.kernelFunc(args as never);
  const [rowsA, colsA] = a.shape.slice(-2) as [number, number];
  const [rowsB, colsB] = b.shape.slice(-2) as [number, number];
  const [M, K] = ta ? [colsA, rowsA] : [rowsA, colsA];
  const N = tb ? rowsB : colsB;
  const batch = Math.max(batchA, batchB);
  const out = backend.makeOutput([...tf.backend_util.assertAndGetBroadcastShape(outer(a.shape), outer(b.shape)), M, N], 'float32');
  // Views are made after makeOutput: allocating may grow (and so replace) the wasm memory.
  lib.gemm(
    ta,
    tb,
    batch,
    M,
    N,
    K,
    heapView(backend, a, size(a.shape)),
    heapView(backend, b, size(b.shape)),
    heapView(backend, out, batch * M * N),
    batchA > 1,
    batchB > 1,
  );
  return out;
}
