import * as tf from '@tensorflow/tfjs';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, test } from 'vitest';
import { blasCandidates, routeGemm, type GemmRoute } from '../core/blas.js';
import { fusedLinear, nativeActive, nativeAddon } from '../core/native.js';
import { Rng } from '../core/random.js';
import { localmimAsync } from './support/cli.js';
import { product, relativeError } from './support/products.js';
import { describeWith } from './support/requirements.js';
import { backend } from './support/setup.js';

// The system BLAS the native addon opens at run time (native/blas.c): its products equal ours, each transpose mode goes
// to the kernel measured faster, the measurement is cached per machine, and LOCALMIM_GEMM forces either. The rest of
// the suite runs our sgemm (vitest.config.ts), so that no result depends on which BLAS a machine has.
const home = mkdtempSync(join(tmpdir(), 'localmim-blas-'));
afterAll(() => rmSync(home, { recursive: true, force: true }));
const auto = { LOCALMIM_GEMM: '', LOCALMIM_HOME: home };

test('the candidates: LOCALMIM_BLAS first, then the platform’s optimised libraries, never the reference BLAS', () => {
  expect(blasCandidates('linux', { LOCALMIM_BLAS: '/opt/blas/libmine.so' })[0]).toBe('/opt/blas/libmine.so');
  expect(blasCandidates('darwin', {})).toEqual(['/System/Library/Frameworks/Accelerate.framework/Accelerate']);
  for (const platform of ['linux', 'win32'] as const) {
    expect(blasCandidates(platform, {}).some((c) => /openblas/.test(c))).toBe(true);
    expect(blasCandidates(platform, {}).some((c) => /^libblas/.test(c))).toBe(false);
  }
});

test('LOCALMIM_GEMM with another value is one line naming it, and a non-zero exit', async () => {
  const r = await localmimAsync(['doctor'], { LOCALMIM_GEMM: 'fastest', LOCALMIM_BACKEND: 'wasm', LOCALMIM_HOME: home });
  expect(r.code).not.toBe(0);
  expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/LOCALMIM_GEMM: expected own or system, got "fastest"/)]);
});

describeWith('blas')('a system BLAS, opened at run time', () => {
  test.runIf(backend.chosen === 'wasm' && nativeActive())(
    'on it, every transpose mode and Linear equal the float64 product within 1e-5',
    () => {
      const rng = new Rng(5);
      const values = (n: number) => Float32Array.from({ length: n }, () => rng.normal());
      const addon = nativeAddon()!;
      expect(routeGemm(addon, { LOCALMIM_GEMM: 'system' }).routes.every((r) => r.system)).toBe(true);
      try {
        const [M, N, K] = [290, 70, 530];
        for (const [ta, tb] of [
          [false, false],
          [true, false],
          [false, true],
          [true, true],
        ] as const) {
          const [a, b] = [values(M * K), values(K * N)];
          const got = tf.tidy(() =>
            tf.matMul(tf.tensor2d(a, ta ? [K, M] : [M, K]), tf.tensor2d(b, tb ? [N, K] : [K, N]), ta, tb).dataSync(),
          );
          expect(relativeError(got, product(a, b, { ba: 1, bb: 1, M, N, K, ta, tb })), `ta=${ta} tb=${tb}`).toBeLessThan(1e-5);
        }
        const [x, w, bias] = [values(M * K), values(N * K), values(N)];
        const y = tf.tidy(() => fusedLinear(tf.tensor2d(x, [M, K]), tf.tensor2d(w, [N, K]), tf.tensor1d(bias)).dataSync());
        const want = product(x, w, { ba: 1, bb: 1, M, N, K, ta: false, tb: true }).map((v, i) => v + bias[i % N]!);
        expect(relativeError(y, want)).toBeLessThan(1e-5);
      } finally {
        routeGemm(addon, { LOCALMIM_GEMM: 'own' });
      }
    },
  );

  test('unset, each mode is measured once per machine, cached in the data folder, and doctor names the kernel of each', async () => {
    const line = async (env: NodeJS.ProcessEnv) => {
      const r = await localmimAsync(['doctor'], { LOCALMIM_BACKEND: 'wasm', ...env });
      expect(r.code, r.stderr).toBe(0);
      return r.stdout.split('\n').find((l) => l.startsWith('native'))!;
    };
    expect(await line(auto)).toMatch(/; GEMM .*\(our time \/ theirs, measured\)$/);
    const saved = JSON.parse(readFileSync(join(home, 'gemm-routes.json'), 'utf8')) as { routes: GemmRoute[] };
    expect(saved.routes.map((r) => r.mode)).toEqual(['NN', 'NT', 'TN', 'TT']);
    for (const r of saved.routes) expect(r.system).toBe(r.ratio! > 1);
    const cached = await line(auto);
    expect(cached).toMatch(/\(our time \/ theirs, cached\)$/);
    for (const r of saved.routes) expect(cached).toContain(`${r.mode} ${r.ratio!.toFixed(2)}×`);
    expect(await line({ LOCALMIM_GEMM: 'system', LOCALMIM_HOME: home })).toMatch(
      /; GEMM \/\S*blas\S* for all modes \(LOCALMIM_GEMM=system\)$/i,
    );
  }, 300_000); // three CLI starts
});
