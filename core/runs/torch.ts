import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { drawPreview, previewDir, previewImages, previewNoise, writePreview } from '../analysis/preview.js';
import { writeAtomic } from '../atomic.js';
import { lossReadEvery } from '../backend.js';
import type { EmbedShard } from '../analysis/embed.js';
import { KNN_BUDGET, scoreEmbedded, type ProbeSet } from '../analysis/knn.js';
import { modelDims, modelFamily, type ModelConfig, type RunConfig } from '../config.js';
import { DecodeCache } from '../data/cache.js';
import { evalImage } from '../data/preprocess.js';
import { torchModel, torchProblem, torchSpec, type ParamGroups, type TorchReport } from '../engine.js';
import type { Classifier } from '../model/classifier.js';
import { targetShapes } from '../model/pretraining.js';
import { UserError } from '../errors.js';
import { homePaths } from '../home.js';
import { decodeSafetensors, encodeSafetensors, type NamedTensor } from '../safetensors.js';
import { TRAIN_PY, writeInitial } from '../scale-out/folder.js';
import type { TrainEvent } from '../train/loop.js';
import type { JobHooks, TrainJob } from './train-job.js';
import type { RunSpec } from './spec.js';

/** Refuses, before anything is written, a run the torch engine cannot train (core/engine.ts torchCannot). */
export function assertTorchCan(spec: RunSpec): void {
  const problem = torchProblem({ kind: embedsOnly(spec) ? 'embed' : spec.kind, model: spec.config.model });
  if (problem) throw new UserError(`engine: ${problem}`);
}

/** A logistic probe of the last block's features: all the torch engine does for it is embed (the fit stays here). */
export function embedsOnly(spec: RunSpec): boolean {
  const f = spec.kind === 'finetune' ? spec.config.finetune : undefined;
  return !!f?.linearProbe && f.probeRecipe === 'logistic' && f.probeFeatures === 'last';
}

/** A classifier's parameter groups as the torch engine takes them: each trainable tensor's lr scale and decay. */
export function paramGroups(model: Classifier, layerDecay: number): ParamGroups {
  const groups = [...model.params.vars].map(([name, p]) => [name, [model.lrScale(name, layerDecay), model.decays(name, p.shape)]]);
  return Object.fromEntries(groups) as ParamGroups;
}

/**
 * Runs a pretraining job on core/torch/train.py (`--engine`), a child of this process: its JSON-line events become
 * the training loop's own, so that whoever listens cannot tell the engines apart. SIGTERM pauses it (it
 * checkpoints, then ends 'paused'); if this process goes, its stdin closes and it does the same.
 */
export async function runTorchJob(
  job: TrainJob,
  hooks: JobHooks,
  torch: TorchReport,
  init?: ReadonlyMap<string, Float32Array>,
): Promise<{ step: number; status: 'finished' | 'paused' }> {
  if (!torch.ok) throw new UserError(`engine: torch is unavailable: ${torch.reason}`);
  const { spec } = job;
  assertTorchCan(spec);
  if (spec.kind !== 'pretrain' || !('items' in job.data)) throw new Error('a torch job pretrains on unlabeled items');
  const config = spec.config;
  const runDir = homePaths(job.home).run(job.runId);
  mkdirSync(runDir, { recursive: true });
  const start = job.resumeFrom ?? join(runDir, 'torch-init.safetensors');
  if (!job.resumeFrom) await writeInitial(config, start, init);
  const probes = join(runDir, 'torch-probes.safetensors');
  const drawing = job.previewEvery ? await previewProbes(config, job.data.items, probes) : undefined;
  const knn = job.probe && (await knnProbes(job.probe, config, job.home, join(runDir, 'torch-knn.safetensors')));
  const gpu = torch.devices.length > 0;
  const o = job.torch ?? {};
  const specFile = join(runDir, 'torch-job.json');
  writeAtomic(
    specFile,
    JSON.stringify({
      ...torchSpec(config),
      items: job.data.items.map((it) => ({ path: it.abs })),
      start,
      out: runDir,
      probes,
      previewEvery: job.previewEvery,
      knn: knn?.spec,
      cadence: job.cadence,
      stopAtStep: job.stopAtStep,
      readEvery: lossReadEvery(gpu ? 'webgpu' : 'cpu'),
      workers: o.workers ?? (gpu ? 6 : 0),
      amp: o.amp ?? false,
      compile: o.compile ?? false,
    }),
  );

  const child = spawn(torch.python!, [TRAIN_PY, '--engine', specFile], { stdio: ['pipe', 'pipe', 'pipe'] });
  const pause = () => child.kill('SIGTERM');
  if (hooks.signal?.aborted) pause();
  hooks.signal?.addEventListener('abort', pause);
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-8000)));
  let result: { step: number; status: 'finished' | 'paused' } | undefined;
  const summary = { family: modelFamily(config.model), targets: targetShapes(config.model) };
  // Events in order: a preview is drawn before the events after it are passed on.
  let chain = Promise.resolve();
  const handle = async (line: string) => {
    const e = JSON.parse(line) as
      | TrainEvent
      | { type: 'start'; step: number; totalSteps: number; stepsPerEpoch: number; device: string }
      | { type: 'preview'; step: number }
      | { type: 'features'; step: number; path: string; seconds: number };
    if (e.type === 'features') {
      if (knn) hooks.onEvent(await knn.score(e));
    } else if (e.type === 'preview') {
      if (!drawing) return;
      try {
        await drawing(job, e.step);
        hooks.onPreview?.(e.step);
      } catch (err) {
        hooks.warn(`preview at step ${e.step} skipped: ${(err as Error).message}`);
      }
    } else if (e.type === 'start' && 'device' in e) {
      const { step, totalSteps, stepsPerEpoch } = e;
      hooks.onEvent({ type: 'start', step, totalSteps, stepsPerEpoch, backend: `torch ${e.device}`, config, model: summary });
    } else {
      if (e.type === 'end') result = { step: e.step, status: e.status };
      hooks.onEvent(e as TrainEvent);
    }
  };
  const lines = createInterface({ input: child.stdout });
  lines.on('line', (line) => line.trim() && (chain = chain.then(() => handle(line))));
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  hooks.signal?.removeEventListener('abort', pause);
  await chain;
  if (!job.resumeFrom) rmSync(start, { force: true }); // a resume starts from a checkpoint, a restart writes it again
  if (result && code === 0) return result;
  const why = stderr.trim().split('\n').at(-1) || `train.py exited with code ${code}`;
  throw new Error(`torch engine: ${why}`);
}

/**
 * The preview probes, as the tfjs engine takes them (the first images, the eval transform, a fixed mask), handed to
 * train.py in `file`; returns what draws the arrays it writes at a preview step, with the one renderer.
 */
async function previewProbes(config: RunConfig, items: { abs: string }[], file: string) {
  const { imgSize } = config.model;
  const images = await previewImages(items, imgSize);
  const dims = torchModel(config.model);
  // A ViT masks each image's patches, a Swin the whole batch's mask units at once (core/runs/job.ts, noiseSize).
  const [rows, L, g] = dims.family === 'swin' ? [1, dims.units, dims.maskGrid] : [images.length, dims.L, dims.g];
  const noise = previewNoise(config.seed, rows * L);
  const pixels = new Float32Array(images.length * imgSize * imgSize * 3);
  images.forEach((img, b) => pixels.set(img.data, b * imgSize * imgSize * 3));
  const tensors = new Map([
    ['images', { shape: [images.length, imgSize, imgSize, 3], values: pixels }],
    ['noise', { shape: [rows, L], values: noise }],
  ]);
  writeAtomic(file, encodeSafetensors(tensors, {}));
  const draw = {
    cells: dims.cells,
    F: dims.F,
    g,
    p: imgSize / g,
    nbins: config.model.nbins,
    hog: config.model.target === 'hog',
  };
  return async (job: TrainJob, step: number) => {
    const dir = previewDir(job.home, job.runId, step);
    const file = join(dir, 'arrays.safetensors');
    const t = decodeSafetensors(readFileSync(file)).tensors;
    rmSync(file); // drawn once; a long run's arrays would fill the disk
    const arrays = {
      preds: dims.cells.map((_, k) => t.get(`pred.${k}`)!.values),
      targets: dims.cells.map((_, k) => t.get(`target.${k}`)!.values),
      mask: t.get('mask')!.values,
    };
    writePreview(dir, step, await drawPreview(images, arrays, draw));
  };
}

/** Images per batch of the torch engine's embedding. */
const TORCH_EMBED_BATCH = 64;

/**
 * The kNN monitor on the torch engine: the probe set's images (reference part, then query part) decoded once here with
 * the evaluation transform, as the tfjs monitor decodes them, handed to train.py in `file`; returns its part of the
 * job spec and what scores the features train.py writes at a monitored step, with the tfjs monitor's code.
 */
async function knnProbes(probe: ProbeSet, config: RunConfig, home: string, file: string) {
  const side = config.model.imgSize;
  const cache = new DecodeCache(homePaths(home).cache);
  const items = [...probe.reference, ...probe.query];
  const pixels = new Float32Array(items.length * side * side * 3);
  for (let i = 0; i < items.length; i++)
    pixels.set((await evalImage(items[i]!.abs, side, { cache, hash: items[i]!.hash })).data, i * side * side * 3);
  writeAtomic(file, encodeSafetensors(new Map([['images', { shape: [items.length, side, side, 3], values: pixels }]]), {}));
  const spec = { images: file, every: probe.every ?? null, budget: KNN_BUDGET, batch: TORCH_EMBED_BATCH };
  const score = async (e: { step: number; path: string; seconds: number }): Promise<TrainEvent> => {
    const t0 = performance.now();
    const features = decodeSafetensors(readFileSync(e.path)).tensors.get('features')!;
    rmSync(e.path); // scored once; a long run's features would fill the disk
    const dim = features.shape[1]!;
    const part = (from: number, of: ProbeSet['reference']) => ({
      features: features.values.slice(from * dim, (from + of.length) * dim),
      dim,
      labels: of.map((it) => it.label),
    });
    const scores = await scoreEmbedded(part(0, probe.reference), part(probe.reference.length, probe.query), probe.classes.length);
    return { type: 'knn', step: e.step, ...scores, seconds: e.seconds + (performance.now() - t0) / 1000 };
  };
  return { spec, score };
}

/**
 * Embedding on the torch engine (`embedFolder`'s `embed`): each shard's images decoded here with the app's evaluation
 * transform, as the tfjs path decodes them, and their features computed by train.py `--embed` on its best device.
 * Refuses, before anything is written, what the engine cannot embed; `dispose` removes its working files.
 */
export function torchEmbedder(torch: TorchReport, backbone: ReadonlyMap<string, NamedTensor>, model: ModelConfig) {
  if (!torch.ok) throw new UserError(`engine: torch is unavailable: ${torch.reason}`);
  const problem = torchProblem({ kind: 'embed', model });
  if (problem) throw new UserError(`engine: ${problem}`);
  const dir = mkdtempSync(join(tmpdir(), 'localmim-embed-'));
  const spec = {
    model: torchModel(model),
    weights: join(dir, 'backbone.safetensors'),
    images: join(dir, 'images.safetensors'),
    out: join(dir, 'features.safetensors'),
    batch: TORCH_EMBED_BATCH,
  };
  writeFileSync(spec.weights, encodeSafetensors(backbone, {}));
  writeFileSync(join(dir, 'embed.json'), JSON.stringify(spec));
  const side = model.imgSize;
  const embed: EmbedShard = async (items, cache, onBatch) => {
    const images = await Promise.all(items.map((it) => evalImage(it.abs, side, cache && { cache, hash: it.hash })));
    const pixels = new Float32Array(items.length * side * side * 3);
    images.forEach((img, i) => pixels.set(img.data, i * side * side * 3));
    writeFileSync(spec.images, encodeSafetensors(new Map([['images', { shape: [items.length, side, side, 3], values: pixels }]]), {}));
    await runPython(torch.python!, [TRAIN_PY, '--embed', join(dir, 'embed.json')]);
    const features = decodeSafetensors(readFileSync(spec.out)).tensors.get('features')!;
    onBatch?.(items.length);
    return { features: features.values, dim: features.shape[1]! };
  };
  return { embed, dispose: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Runs train.py to its end; its last line of stderr is the error. */
async function runPython(python: string, args: string[]): Promise<void> {
  const child = spawn(python, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-8000)));
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  if (code !== 0) throw new Error(`torch engine: ${stderr.trim().split('\n').at(-1) || `train.py exited with code ${code}`}`);
}
