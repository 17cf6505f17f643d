// npm run bench [-- --only step,data --backends wasm,cpu --seconds 60 --model vit-base --img 224 --patch 16 --batch 64]
// step: one full pretraining step (forward, four losses, backward, AdamW), by default of vit-tiny at 64 px,
//       patch 8, batch 32, mask 0.75, on every backend that loads; --model swin-tiny (112 px, patch 4) etc. for Swin.
// --peer: the same step in PyTorch (bench/peer.py) on this machine, and the ratio; --peer-device cuda runs it
//       on the GPU in fp32 (TF32 off).
// data: indexing throughput against a bare sharp decode loop, and loader epochs with a cold and a warm cache.
// gemm (not run by default): native/sgemm.c against the system's BLAS on the step's GEMM shapes (bench/gemm.ts).
// profile (not run by default): the default step on wasm by op class, against a FLOP-bound ideal (bench/profile.ts).
import * as tf from '@tensorflow/tfjs';
import { parseArgs } from 'node:util';
import { activeAdapter, BACKENDS, lossReadEvery, useBackend, type BackendName } from '../core/backend.js';
import { describeGemm, routeGemm } from '../core/blas.js';
import { nativeActive, nativeAddon, setNativeGemm } from '../core/native.js';
import { modelFamily, parseRunConfig } from '../core/config.js';
import { presetFor, sizeDefaults } from '../core/presets.js';
import { Rng } from '../core/random.js';
import { pretrainModel } from '../core/train/pretrain.js';
import { TrainStep } from '../core/train/step.js';
import { syntheticImages } from '../test/support/images.js';
import { benchPeer } from './peer.js';

const { values } = parseArgs({
  options: {
    only: { type: 'string', default: 'data,step' },
    backends: { type: 'string', default: BACKENDS.join(',') },
    seconds: { type: 'string', default: '60' },
    batch: { type: 'string', default: '32' },
    model: { type: 'string', default: 'vit-tiny' },
    img: { type: 'string' },
    patch: { type: 'string' },
    peer: { type: 'boolean', default: false },
    'peer-device': { type: 'string', default: 'cpu' },
    soak: { type: 'string', default: '0' },
  },
});
const budgetS = Number(values.seconds);
const B = Number(values.batch);
const size = values.model;
const bySize = { imgSize: 64, patchSize: 8, ...sizeDefaults(size).model };
const [img, patch] = [Number(values.img ?? bySize.imgSize), Number(values.patch ?? bySize.patchSize)];
const config = parseRunConfig({
  model: { size, ...presetFor('localmim-hog', size).model, imgSize: img, patchSize: patch, maskRatio: 0.75 },
  optim: { batch: B },
});

let decoders = 0;

interface Result {
  backend: BackendName;
  stepsPerS: number;
  imagesPerS: number;
  steps: number;
}

/** The default step as training runs it: the batch prepared on the device inside the step, losses read every few steps. */
function pretrainStepper(backend: BackendName) {
  const model = pretrainModel(config.model, 0);
  decoders = model.cells.length;
  const trainer = new TrainStep(model, config.optim);
  const images = syntheticImages(B, img, 1);
  const rng = new Rng(2);
  const every = lossReadEvery(backend);
  let unread: tf.Tensor[] = [];
  const step = async () => {
    const b = model.prepare(images, rng.fill(model.noiseSize(B)));
    unread.push(trainer.run([b], 1e-4));
    model.disposeBatch(b);
    if (unread.length < every) return;
    const all = tf.concat(unread);
    await all.data();
    tf.dispose([all, ...unread]);
    unread = [];
  };
  return { step, every, dispose: () => (trainer.dispose(), model.dispose()) };
}

async function benchPretrainStep(backend: BackendName): Promise<Result> {
  const { step, every, dispose } = pretrainStepper(backend);
  for (let i = 0; i < every; i++) await step(); // warm-up: kernels compiled, buffers allocated
  let steps = 0;
  const t0 = performance.now();
  while (steps < 3 * every || (performance.now() - t0 < budgetS * 1000 && steps < 50 * every)) {
    for (let i = 0; i < every; i++) await step();
    steps += every;
  }
  const busy = performance.now() - t0;
  // --soak N: N more steps, printing resident memory, to show that it does not grow.
  const soak = Number(values.soak);
  for (let i = 1; i <= soak; i++) {
    await step();
    if (i % Math.max(1, Math.floor(soak / 5)) === 0)
      console.log(
        JSON.stringify({
          bench: 'soak',
          backend,
          step: i,
          rssMB: Math.round(process.memoryUsage().rss / 2 ** 20),
          numTensors: tf.memory().numTensors,
        }),
      );
  }
  dispose();
  const stepsPerS = steps / (busy / 1000);
  return { backend, stepsPerS, imagesPerS: stepsPerS * B, steps };
}

const sections = values.only.split(',');
// Loaded on demand: the data bench needs sharp, which a bundled GPU bench (bench/gpu-pack.sh) leaves out.
if (sections.includes('data')) await (await import('./data.js')).benchData();
if (sections.includes('gemm')) (await import('./gemm.js')).benchGemm(budgetS);
if (sections.includes('profile')) {
  // The native path as training takes it: our kernels, and each transpose mode's products on the faster BLAS.
  const why = (await useBackend('wasm')) ?? setNativeGemm(true);
  if (why) throw new Error(`--only profile: the native wasm path cannot run: ${why}`);
  console.log(`profile: ${describeGemm(routeGemm(nativeAddon()!))}`);
  const { profileStep, printProfile } = await import('./profile.js');
  const stepper = pretrainStepper('wasm');
  printProfile(await profileStep(stepper.step, stepper.every));
  stepper.dispose();
}

const results: Result[] = [];
for (const name of sections.includes('step') ? (values.backends.split(',') as BackendName[]) : []) {
  const why = await useBackend(name);
  if (why) {
    console.log(`${name.padEnd(15)} skipped: ${why}`);
    continue;
  }
  if (name === 'webgpu') console.log(JSON.stringify({ bench: 'adapter', ...activeAdapter() }));
  if (name === 'wasm') {
    const off = process.env.LOCALMIM_NATIVE === '0' ? 'LOCALMIM_NATIVE=0' : setNativeGemm(true);
    console.log(`wasm: native path ${off ? `off (${off})` : `on; ${describeGemm(routeGemm(nativeAddon()!))}`}`);
  }
  const r = await benchPretrainStep(name);
  results.push(r);
  console.log(
    JSON.stringify({
      bench: 'pretrain-step',
      backend: name,
      model: size,
      img,
      patch,
      batch: B,
      stepsPerS: +r.stepsPerS.toFixed(4),
      imagesPerS: +r.imagesPerS.toFixed(2),
    }),
  );
}

if (values.peer && modelFamily(config.model) === 'swin') throw new Error('--peer: bench/peer.py runs the ViT step only');
const peer = values.peer ? benchPeer({ batch: B, seconds: budgetS, model: size, img, patch, device: values['peer-device'] }) : undefined;
const peakRssMB = Math.round(process.resourceUsage().maxRSS / 1024);
for (const r of results) {
  if (peer)
    console.log(
      JSON.stringify({
        bench: 'pretrain-step-vs-peer',
        backend: r.backend,
        native: nativeActive(),
        ratio: +(r.stepsPerS / peer.stepsPerS).toFixed(3),
        ours: +r.stepsPerS.toFixed(4),
        peer: peer.stepsPerS,
        peerThreads: `${peer.torchThreads} torch × ${peer.blasThreads} BLAS`,
        peerBlas: peer.blas,
        // The whole process's peak: with several backends benched, that of all of them.
        memoryRatio: +(peakRssMB / peer.peakRssMB).toFixed(3),
        oursPeakRssMB: peakRssMB,
        peerPeakRssMB: peer.peakRssMB,
      }),
    );
}
console.log(JSON.stringify({ bench: 'memory', peakRssMB, numTensors: tf.memory().numTensors }));

if (results.length) {
  console.log(
    `\npretrain step: ${size}, ${img} px, patch ${patch}, batch ${B}, mask 0.75, ${decoders} decoders, HOG, AdamW (tfjs ${tf.version.tfjs})`,
  );
  console.log('backend          steps/s   images/s   s/step   timed steps');
  for (const r of results)
    console.log(
      `${r.backend.padEnd(15)} ${r.stepsPerS.toFixed(3).padStart(8)} ${r.imagesPerS.toFixed(1).padStart(10)} ${(1 / r.stepsPerS).toFixed(2).padStart(8)} ${String(r.steps).padStart(13)}`,
    );
}
