import * as tf from '@tensorflow/tfjs';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { createRequire } from 'node:module';
import { heapView, sharedIdentity } from './native-internals.js';

// The native compute path: a Node-API addon (native/addon.c) that `npm install` builds with node-gyp and nothing
// but a C compiler. tfjs-wasm's own BatchMatMul (our sgemm, native/sgemm.c, every transpose mode, on every physical
// core), Transpose and Identity (sharing memory instead of copying) are swapped in tfjs's kernel registry, since tfjs
// ops and their gradients call them by name. Our single-pass kernels (LayerNorm, GELU, Linear, column sums,
// attention, HOG binning, AdamW) each stand for several tfjs ops, so their callers pick between the two with
// nativeOr. When the addon cannot build or load, plain wasm runs, and doctor, the app and the run estimates say so
// (core/backend.ts).

export interface Addon {
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
  kernel(): string;
  kernels(): string[];
  useKernel(name: string): void;
  openBlas(path: string): boolean;
  blasPath(): string | null;
  routeGemm(ta: boolean, tb: boolean, system: boolean): void;
  layerNorm(x: F, w: F, b: F, y: F, mean: F, rstd: F, rows: number, cols: number, eps: number): void;
  layerNormGrad(dy: F, x: F, w: F, mean: F, rstd: F, dx: F, dw: F, db: F, rows: number, cols: number): void;
  gelu(x: F, y: F, n: number): void;
  geluGrad(dy: F, x: F, dx: F, n: number): void;
  columnSum(x: F, out: F, rows: number, cols: number): void;
  adamw(p: F, g: F, m: F, v: F, pOut: F, mOut: F, vOut: F, n: number, ...hyper: number[]): void;
  linear(x: F, w: F, b: F, y: F, M: number, N: number, K: number): void;
  attention(out: F, qkv: F, probs: F, bias: F, B: number, T: number, H: number, scale: number, n: number): void;
  attentionGrad(dout: F, qkv: F, probs: F, dqkv: F, dbias: F, B: number, T: number, H: number, scale: number, n: number): void;
  orientedMagnitudes(x: F, edges: F, bias: F, out: F, B: number, H: number, W: number, nbins: number): void;
}
type F = Float32Array;

let addon: Addon | undefined;
let loadError: string | undefined;
const originals = new Map<string, tf.KernelConfig>();

function load(): Addon | undefined {
  if (addon || loadError) return addon;
  try {
    addon = createRequire(import.meta.url)('../build/Release/localmim_native.node') as Addon;
  } catch (err) {
    loadError = `the native addon is not built (${String((err as Error).message).split('\n')[0]})`;
  }
  return addon;
}

/** Why the native path is off, or undefined when it is on. */
export const nativeStatus = () => (active ? undefined : (loadError ?? 'off'));
let active = false;
export const nativeActive = () => active;
/** `fused` while the native path is on, else `fallback` (the same in tfjs ops); called at each use, as the path can be switched. */
export const nativeOr = <F>(fused: F, fallback: F): F => (active ? fused : fallback);
export const nativeThreads = () => addon?.threads() ?? 0;
/** The sgemm micro-kernel in use ("avx2-fma", "neon", "portable"), or undefined without the addon. */
export const nativeKernel = () => addon?.kernel();
/** The sgemm micro-kernels this CPU runs, best first. */
export const nativeKernels = () => addon?.kernels() ?? [];
/** Switches sgemm to one of nativeKernels() (tests and benchmarks compare them). */
export const useNativeKernel = (name: string) => addon?.useKernel(name);

/** The addon, loaded (core/blas.ts routes its products and times them), or undefined when it cannot load. */
export const nativeAddon = (): Addon | undefined => load();

/** Turns the native path on for the wasm backend (returns why not, if it cannot), or off. */
export function setNativeGemm(on: boolean): string | undefined {
  if (on === active) return undefined;
  const kernels: [string, tf.KernelFunc][] = [
    ['BatchMatMul', (args) => batchMatMul(addon!, args as never)],
    ['Transpose', (args) => transpose(addon!, args as never)],
    ['Identity', sharedIdentity as never],
  ];
  if (on && !load()) return loadError;
  registerFused();
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
const size = (s: number[]) => s.reduce((x, y) => x * y, 1);

function transpose(lib: Addon, args: WasmArgs<{ x: tf.TensorInfo }, { perm: number[] }>) {
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

function batchMatMul(lib: Addon, args: WasmArgs<{ a: tf.TensorInfo; b: tf.TensorInfo }, { transposeA: boolean; transposeB: boolean }>) {
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

// The fused kernels, under names of their own on the wasm backend: each makes its outputs first, then views
// the heap through `v` (allocating may grow, and so move, it), then runs one native loop. `v` of an absent optional
// input is empty.
type View = (t?: tf.TensorInfo) => Float32Array;
type Fused = (backend: BackendWasm, inputs: tf.TensorInfo[], attrs: Record<string, number>, v: View) => tf.TensorInfo[];
const FUSED: Record<string, Fused> = {
  LocalmimLayerNorm: (backend, [x, w, b], { eps }, v) => {
    const cols = x!.shape.at(-1)!;
    const rows = size(x!.shape) / cols;
    const outs = [backend.makeOutput(x!.shape, 'float32'), backend.makeOutput([rows], 'float32'), backend.makeOutput([rows], 'float32')];
    addon!.layerNorm(v(x), v(w), v(b), v(outs[0]), v(outs[1]), v(outs[2]), rows, cols, eps!);
    return outs;
  },
  LocalmimLayerNormGrad: (backend, [dy, x, w, mean, rstd], _, v) => {
    const cols = x!.shape.at(-1)!;
    const outs = [x!, w!, w!].map((t) => backend.makeOutput(t.shape, 'float32'));
    addon!.layerNormGrad(v(dy), v(x), v(w), v(mean), v(rstd), v(outs[0]), v(outs[1]), v(outs[2]), size(x!.shape) / cols, cols);
    return outs;
  },
  LocalmimGelu: (backend, [x], _, v) => {
    const y = backend.makeOutput(x!.shape, 'float32');
    addon!.gelu(v(x), v(y), size(x!.shape));
    return [y];
  },
  LocalmimGeluGrad: (backend, [dy, x], _, v) => {
    const dx = backend.makeOutput(x!.shape, 'float32');
    addon!.geluGrad(v(dy), v(x), v(dx), size(x!.shape));
    return [dx];
  },
  LocalmimColumnSum: (backend, [x], _, v) => {
    const cols = x!.shape.at(-1)!;
    const out = backend.makeOutput([cols], 'float32');
    addon!.columnSum(v(x), v(out), size(x!.shape) / cols, cols);
    return [out];
  },
  LocalmimLinear: (backend, [x, w, b], _, v) => {
    const [N, K] = w!.shape as [number, number];
    const M = size(x!.shape) / K;
    const y = backend.makeOutput([M, N], 'float32');
    addon!.linear(v(x), v(w), v(b), v(y), M, N, K);
    return [y];
  },
  LocalmimAttention: (backend, [qkv, bias], { B, T, heads, scale }, v) => {
    const W = qkv!.shape[1]! / 3;
    const outs = [backend.makeOutput([B! * T!, W], 'float32'), backend.makeOutput([B! * heads!, T!, T!], 'float32')];
    addon!.attention(v(outs[0]), v(qkv), v(outs[1]), v(bias), B!, T!, heads!, scale!, bias?.shape[0] ?? 0);
    return outs;
  },
  LocalmimAttentionGrad: (backend, [dout, qkv, probs, bias], { B, T, heads, scale }, v) => {
    const outs = [backend.makeOutput(qkv!.shape, 'float32'), ...(bias ? [backend.makeOutput(bias.shape, 'float32')] : [])];
    addon!.attentionGrad(v(dout), v(qkv), v(probs), v(outs[0]), v(outs[1]), B!, T!, heads!, scale!, bias?.shape[0] ?? 0);
    return outs;
  },
  LocalmimOrientedMagnitudes: (backend, [x, edges, bias], { nbins }, v) => {
    const [B, H, W] = x!.shape as number[];
    const out = backend.makeOutput([nbins! * B!, H!, W!, 3], 'float32');
    addon!.orientedMagnitudes(v(x), v(edges), v(bias), v(out), B!, H!, W!, nbins!);
    return [out];
  },
  LocalmimAdamW: (backend, [p, g, m1, m2], a, v) => {
    const outs = [p!, m1!, m2!].map((t) => backend.makeOutput(t.shape, 'float32'));
    addon!.adamw(
      v(p),
      v(g),
      v(m1),
      v(m2),
      v(outs[0]),
      v(outs[1]),
      v(outs[2]),
      size(p!.shape),
      a.beta1!,
      a.beta2!,
      a.eps!,
      a.decay!,
      a.sqrtBc2!,
      a.stepSize!,
    );
    return outs;
  },
};

function registerFused() {
  for (const [kernelName, f] of Object.entries(FUSED))
    if (!tf.getKernel(kernelName, 'wasm'))
      tf.registerKernel({
        kernelName,
        backendName: 'wasm',
        kernelFunc: ({ inputs, attrs, backend }) => {
          const wasm = backend as BackendWasm;
          const view: View = (t) => (t ? heapView(wasm, t, size(t.shape)) : new Float32Array(0));
          return f(wasm, Object.values(inputs) as tf.TensorInfo[], attrs as Record<string, number>, view);
        },
      });
}

const run = (name: string, inputs: tf.Tensor[], attrs: Record<string, number> = {}) =>
  tf.engine().runKernel(name, Object.fromEntries(inputs.map((t, i) => [i, t])), attrs) as tf.Tensor[];

/** Fused LayerNorm over the last axis of `x`: `[y, mean, rstd]`, the last two one per row. Native path only. */
export const fusedLayerNorm = (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor, eps: number) => run('LocalmimLayerNorm', [x, w, b], { eps });
/** `[dx, dw, db]` of fusedLayerNorm from the output gradient `dy` and what its forward pass returned. */
export const fusedLayerNormGrad = (dy: tf.Tensor, x: tf.Tensor, w: tf.Tensor, mean: tf.Tensor, rstd: tf.Tensor) =>
  run('LocalmimLayerNormGrad', [dy, x, w, mean, rstd]);
/** Exact (erf) GELU in one pass. Native path only. */
export const fusedGelu = (x: tf.Tensor) => run('LocalmimGelu', [x])[0]!;
export const fusedGeluGrad = (dy: tf.Tensor, x: tf.Tensor) => run('LocalmimGeluGrad', [dy, x])[0]!;
/** Sums over every axis but the last: `[cols]`. Native path only. */
export const fusedColumnSum = (x: tf.Tensor) => run('LocalmimColumnSum', [x])[0]!;

/** `x @ wᵀ + b` for `x [M, K]`, `w [N, K]` (PyTorch's Linear) as one sgemm onto the bias rows. Native path only. */
export const fusedLinear = (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => run('LocalmimLinear', [x, w, b])[0]!;

/** The shape of a multi-head attention over `B` sequences of `T` tokens, and its logit scale. */
export interface Heads {
  B: number;
  T: number;
  heads: number;
  scale: number;
}
/**
 * Multi-head attention on the fused projection `qkv [B·T, 3W]`, with an optional additive `bias [n, H, T, T]` on the
 * scores of sequence b as its row b mod n: `[out [B·T, W], probs [B·H, T, T]]`. Native path only.
 */
export const fusedAttention = (qkv: tf.Tensor, h: Heads, bias?: tf.Tensor) =>
  run('LocalmimAttention', bias ? [qkv, bias] : [qkv], { ...h });
/** `[dqkv [B·T, 3W], dbias]` of fusedAttention (dbias only with a bias) from `dout` and what its forward kept, `[qkv, probs, bias?]`. */
export const fusedAttentionGrad = (dout: tf.Tensor, saved: tf.Tensor[], h: Heads) =>
  run('LocalmimAttentionGrad', [dout, ...saved], { ...h });

/**
 * Each pixel's Sobel magnitude in its orientation bin, `[nbins·B, H, W, 3]` bin-major, of `x [B, H, W, 3]`, given the
 * bin edges `[2, nbins − 1]` (cos, sin) and the Sobel offsets `bias [2]`, as core/targets/hog.ts computes it. Native path only.
 */
export const fusedOrientedMagnitudes = (x: tf.Tensor, edges: tf.Tensor, bias: tf.Tensor, nbins: number) =>
  run('LocalmimOrientedMagnitudes', [x, edges, bias], { nbins })[0]!;

export interface AdamWHyper {
  beta1: number;
  beta2: number;
  eps: number;
  /** 1 − lr·weight decay, or 1 for a parameter that does not decay. */
  decay: number;
  sqrtBc2: number;
  /** lr / bias correction 1. */
  stepSize: number;
}
/** One AdamW update of a parameter `p` with gradient `g` and moments `m`, `v` in one pass: `[p', m', v']`. Native path only. */
export const fusedAdamW = (p: tf.Tensor, g: tf.Tensor, m: tf.Tensor, v: tf.Tensor, h: AdamWHyper) =>
  run('LocalmimAdamW', [p, g, m, v], { ...h });
