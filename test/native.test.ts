import * as tf from '@tensorflow/tfjs';
import { afterAll, expect, test } from 'vitest';
import { parseRunConfig } from '../core/config.js';
import { LocalMIM } from '../core/model/localmim.js';
import { nativeActive, nativeStatus, setNativeGemm } from '../core/native.js';
import { Rng } from '../core/random.js';
import { backend } from './setup.js';
import { syntheticImages } from './images.js';

// CI builds the addon (libopenblas-dev) and sets LOCALMIM_REQUIRE_NATIVE=1, so there this cannot be skipped.
const available = backend.chosen === 'wasm' && nativeActive();
afterAll(() => void (available && setNativeGemm(true)));

test('the native path is on wherever CI requires it', () => {
  if (process.env.LOCALMIM_REQUIRE_NATIVE === '1') expect(nativeStatus()).toBeUndefined();
});

test.runIf(available)('gradients of the native path equal the reference wasm path within 1e-5 relative', () => {
  const cfg = parseRunConfig({ model: { D: 64, depth: 4, heads: 4, decoderDim: 32, decoderHeads: 4, imgSize: 32, patchSize: 8 } });
  const model = new LocalMIM(cfg.model, 0);
  const batch = model.prepare(syntheticImages(4, 32, 2), new Rng(5).fill(4 * model.dims.L));
  const vars = [...model.params.vars.values()];
  const grads = () => {
    const { value, grads: g } = tf.variableGrads(() => model.forward(batch).loss, vars);
    const out = Object.fromEntries(Object.entries(g).map(([n, t]) => [n, t.dataSync().slice() as Float32Array]));
    tf.dispose([value, ...Object.values(g)]);
    return out;
  };
  const fast = grads();
  setNativeGemm(false);
  const reference = grads();
  setNativeGemm(true);
  for (const [name, ref] of Object.entries(reference)) {
    const got = fast[name]!;
    let diff = 0;
    let norm = 0;
    ref.forEach((r, i) => {
      diff += (got[i]! - r) ** 2;
      norm += r * r;
    });
    expect(Math.sqrt(diff / Math.max(norm, 1e-30)), name).toBeLessThan(1e-5);
  }
  model.dispose();
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
