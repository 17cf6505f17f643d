import * as tf from '@tensorflow/tfjs';
import { afterAll, afterEach, describe, expect, test } from 'vitest';
import { parseRunConfig } from '../core/config.js';
import { LocalMIM } from '../core/model/localmim.js';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { heapView, refCount } from '../core/native-internals.js';
import { execFileSync } from 'node:child_process';
import { fusedLinear, nativeActive, nativeKernel, nativeKernels, nativeStatus, setNativeGemm, useNativeKernel } from '../core/native.js';
import { AdamW } from '../core/train/adamw.js';
import { Rng } from '../core/random.js';
import { hog } from '../core/targets/hog.js';
import { toTensor } from '../core/image.js';
import { backend } from './support/setup.js';
import { syntheticImages } from './support/images.js';
import { product, relativeError } from './support/products.js';

// CI builds the addon (a C compiler is all it needs) and sets LOCALMIM_REQUIRE_NATIVE=1, so there this cannot be skipped.
const available = backend.chosen === 'wasm' && nativeActive();
const best = nativeKernel();
afterEach(() => void (available && useNativeKernel(best!)));
afterAll(() => void (available && setNativeGemm(true)));
// Every sgemm micro-kernel this CPU can run (AVX2+FMA and portable on x86-64, NEON and portable on arm64).
const kernels = available ? nativeKernels() : [];

test('the native path is on wherever CI requires it, and links no BLAS library', () => {
  if (process.env.LOCALMIM_REQUIRE_NATIVE === '1') expect(nativeStatus()).toBeUndefined();
  if (!available || process.platform !== 'linux') return;
  const libs = execFileSync('ldd', [new URL('../build/Release/localmim_native.node', import.meta.url).pathname], { encoding: 'utf8' });
  expect(libs).toMatch(/libc\.so/);
  expect(libs).not.toMatch(/blas|lapack|mkl|gfortran/i);
});

test.runIf(available)('the best sgemm kernel this CPU runs is the one in use', () => {
  expect(kernels[0]).toBe(best);
  expect(kernels).toContain('portable');
  if (process.arch === 'x64' && readCpuFlags().includes('avx2')) expect(best).toBe('avx2-fma');
  if (process.arch === 'arm64') expect(best).toBe('neon');
});

function readCpuFlags(): string {
  try {
    return execFileSync('grep', ['-m1', '^flags', '/proc/cpuinfo'], { encoding: 'utf8' });
  } catch {
    return '';
  }
}

describe.each(kernels)('sgemm kernel %s', (kernel) => {
  const rng = new Rng(11);
  const values = (n: number) => Float32Array.from({ length: n }, () => rng.normal());

  // [batchA, batchB, M, N, K]: tile edges, K past one block (256), M past one block (144), N past one block (3072),
  // products big enough to split over threads, and batches split by product.
  const shapes: number[][] = [
    [1, 1, 1, 1, 1],
    [1, 1, 7, 5, 3],
    [1, 1, 13, 17, 300],
    [1, 1, 150, 37, 70],
    [1, 1, 3, 3100, 4],
    [1, 1, 290, 70, 530],
    [9, 9, 11, 6, 13],
    [6, 1, 20, 30, 40],
  ];
  test.each(shapes)('matmul [%i|%i × %i, %i, %i] in every transpose mode equals the float64 product within 1e-5', (ba, bb, M, N, K) => {
    useNativeKernel(kernel);
    for (const [ta, tb] of [
      [false, false],
      [true, false],
      [false, true],
      [true, true],
    ] as const) {
      const [a, b] = [values(ba! * M! * K!), values(bb! * K! * N!)];
      const A = tf.tensor(a, [ba!, ...(ta ? [K!, M!] : [M!, K!])]);
      const B = tf.tensor(b, [bb!, ...(tb ? [N!, K!] : [K!, N!])]);
      const got = tf.matMul(A, B, ta, tb);
      const want = product(a, b, { ba: ba!, bb: bb!, M: M!, N: N!, K: K!, ta, tb });
      expect(got.shape).toEqual([Math.max(ba!, bb!), M!, N!]);
      expect(relativeError(got.dataSync(), want), `ta=${ta} tb=${tb}`).toBeLessThan(1e-5);
      tf.dispose([A, B, got]);
    }
  });

  test('Linear (sgemm accumulating onto the bias rows) equals the float64 x·wᵀ + b', () => {
    useNativeKernel(kernel);
    const [M, N, K] = [301, 45, 270];
    const [x, w, b] = [values(M * K), values(N * K), values(N)];
    const y = tf.tidy(() => fusedLinear(tf.tensor2d(x, [M, K]), tf.tensor2d(w, [N, K]), tf.tensor1d(b)).dataSync());
    const want = product(x, w, { ba: 1, bb: 1, M, N, K, ta: false, tb: true }).map((v, i) => v + b[i % N]!);
    expect(relativeError(y, want)).toBeLessThan(1e-5);
  });
});

test.each(kernels)('gradients of the native path (sgemm kernel %s) equal the reference wasm path within 1e-5 relative', async (kernel) => {
  useNativeKernel(kernel);
  const cfg = parseRunConfig({ model: { D: 64, depth: 4, heads: 4, decoderDim: 32, decoderHeads: 4, imgSize: 32, patchSize: 8 } });
  const model = new LocalMIM(cfg.model, 0);
  const batch = model.prepare(syntheticImages(4, 32, 2), new Rng(5).fill(4 * model.dims.L));
  const vars = [...model.params.vars.values()];
  let kernels: string[] = [];
  const grads = async () => {
    let out: Record<string, Float32Array> = {};
    ({ kernelNames: kernels } = await tf.profile(() => {
      const { value, grads: g } = tf.variableGrads(() => model.forward(batch).loss, vars);
      out = Object.fromEntries(Object.entries(g).map(([n, t]) => [n, t.dataSync().slice() as Float32Array]));
      tf.dispose([value, ...Object.values(g)]);
    }));
    return out;
  };
  const fast = await grads();
  const fused = ['LocalmimLayerNorm', 'LocalmimLayerNormGrad', 'LocalmimGelu', 'LocalmimGeluGrad', 'LocalmimColumnSum'];
  expect(fused.filter((k) => !kernels.includes(k))).toEqual([]);
  setNativeGemm(false);
  const reference = await grads();
  setNativeGemm(true);
  expect(kernels.filter((k) => k.startsWith('Localmim'))).toEqual([]);
  for (const [name, ref] of Object.entries(reference)) expect(relativeError(fast[name]!, ref), name).toBeLessThan(1e-5);
  model.dispose();
});

test.runIf(available)('the fused AdamW follows the tfjs-op AdamW: decay flags, lr scales, bias correction', () => {
  const rng = new Rng(3);
  const t = (shape: number[]) =>
    tf.tensor(
      Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => rng.normal()),
      shape,
    );
  const shapes: [string, number[]][] = [
    ['blocks.0.mlp.fc1.weight', [24, 8]],
    ['blocks.0.mlp.fc1.bias', [24]],
    ['cls_token', [1, 1, 8]],
  ];
  const o = parseRunConfig({ optim: { weightDecay: 0.3 } }).optim;
  const init = shapes.map(([, s]) => t(s));
  const steps = [0, 1, 2].map(() => shapes.map(([, s]) => t(s)));
  const trajectory = () => {
    const vars = new Map(shapes.map(([name], i) => [name, tf.variable(init[i]!.clone(), true, `${name}-${Math.random()}`)]));
    const opt = new AdamW(vars, o, { lrScale: (name) => (name.includes('bias') ? 0.5 : 2) });
    for (const [k, g] of steps.entries()) opt.apply(Object.fromEntries([...vars.values()].map((v, i) => [v.name, g[i]!])), 1e-2 * (k + 1));
    const out = [...vars.keys()].flatMap((name) => [vars.get(name)!, opt.m.get(name)!, opt.v.get(name)!].map((x) => x.dataSync().slice()));
    opt.dispose();
    tf.dispose([...vars.values()]);
    return out;
  };
  const fast = trajectory();
  setNativeGemm(false);
  const reference = trajectory();
  setNativeGemm(true);
  fast.forEach((got, i) => expect(relativeError(got, reference[i]!)).toBeLessThan(1e-6));
  tf.dispose([...init, ...steps.flat()]);
});

test.runIf(available)('the wasm internals the native path reads: heap offsets, and reference counts that Identity shares', () => {
  const backend = tf.backend() as BackendWasm;
  const x = tf.tensor([1.5, -2, 3.25, 7], [2, 2]);
  // A heap view must read the tensor's values; if tfjs renames dataIdMap, memoryOffset or HEAPU8, this throws.
  expect([...heapView(backend, x, 4)]).toEqual([1.5, -2, 3.25, 7]);
  expect(refCount(backend, x)).toBe(1);
  const y = tf.clone(x);
  expect(refCount(backend, x)).toBe(2);
  x.dispose();
  expect([...y.dataSync()]).toEqual([1.5, -2, 3.25, 7]);
  expect(refCount(backend, y)).toBe(1);
  y.dispose();
});

test.runIf(available)('native matmul and transpose agree with tfjs on every transpose mode and batch broadcast', () => {
  const rng = new Rng(1);
  const t = (shape: number[]) =>
    tf.tensor(
      Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => rng.normal()),
      shape,
    );
  const cases: [number[], number[], boolean, boolean][] = [
    [[7, 5], [5, 3], false, false],
    [[5, 7], [5, 3], true, false],
    [[7, 5], [3, 5], false, true],
    [[5, 7], [3, 5], true, true],
    [[4, 7, 5], [4, 5, 3], false, false],
    [[4, 7, 5], [5, 3], false, false],
    [[7, 5], [4, 3, 5], false, true],
  ];
  const results = cases.map(([sa, sb, ta, tb]) => {
    const [a, b] = [t(sa), t(sb)];
    const x = t([2, 3, 4, 5, 6]);
    const [fast, perm] = [tf.matMul(a, b, ta, tb), tf.transpose(x, [4, 2, 0, 3, 1])];
    setNativeGemm(false);
    const [ref, refPerm] = [tf.matMul(a, b, ta, tb), tf.transpose(x, [4, 2, 0, 3, 1])];
    setNativeGemm(true);
    return {
      shapes: [fast.shape, ref.shape],
      err: tf.max(tf.abs(tf.sub(fast, ref))).dataSync()[0]!,
      permSame: tf.all(tf.equal(perm, refPerm)).dataSync()[0],
    };
  });
  for (const r of results) {
    expect(r.shapes[0]).toEqual(r.shapes[1]);
    expect(r.err).toBeLessThan(1e-5);
    expect(r.permSame).toBe(1);
  }
});

test.runIf(available)('the native HOG histograms equal the tensor-op ones, with and without Sobel offsets', async () => {
  const images = toTensor(syntheticImages(3, 24, 9));
  const bias = tf.tensor1d([0.37, -1.25]);
  const run = () =>
    tf.profile(() => [...hog(images, 9, [2, 4, 8]), ...hog(images, 18, [4], [bias])].map((t) => t.dataSync().slice() as Float32Array));
  const fast = await run();
  expect(fast.kernelNames).toContain('LocalmimOrientedMagnitudes');
  setNativeGemm(false);
  const reference = await run();
  setNativeGemm(true);
  const [got, want] = [fast.result as unknown as Float32Array[], reference.result as unknown as Float32Array[]];
  for (const [i, r] of want.entries()) expect(relativeError(got[i]!, r), `output ${i}`).toBeLessThan(1e-6);
  tf.dispose([images, bias]);
});
