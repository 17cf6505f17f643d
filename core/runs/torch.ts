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
import { modelFamily, type ModelConfig, type RunConfig } from '../config.js';
import { DecodeCache } from '../data/cache.js';
import { evalImage } from '../data/preprocess.js';
import { torchFinetuneSpec, torchModel, torchProblem, torchSpec, type ParamGroups, type TorchReport } from '../engine.js';
import { classifierFor, isBackbone, type Classifier } from '../model/classifier.js';
import { targetShapes } from '../model/pretraining.js';
import { UserError } from '../errors.js';
import { homePaths } from '../home.js';
import { decodeSafetensors, encodeSafetensors, type NamedTensor } from '../safetensors.js';
import { TRAIN_PY, writeInitial } from '../scale-out/folder.js';
import type { FinetuneRun } from '../finetune-config.js';
import { saveCheckpoint } from '../train/checkpoint.js';
import { fitHead } from '../train/finetune.js';
import type { ModelSummary, TrainEvent } from '../train/loop.js';
import { evalImages, type LabeledSplit } from './baselines.js';
import type { JobHooks, LabeledItem, TrainJob } from './train-job.js';
import type { RunSpec } from './spec.js';

/** Refuses, before anything is written, a run the torch engine cannot train (core/engine.ts torchCannot). */
export function assertTorchCan(spec: RunSpec): void {
  const f = spec.kind === 'finetune' ? spec.config.finetune : undefined;
  const { model } = spec.config;
  const job = embedsOnly(spec)
    ? { kind: 'embed' as const, model }
    : { kind: spec.kind, model, linearProbe: f?.linearProbe ? f.probeRecipe : undefined };
  const problem = torchProblem(job);
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
 * Runs a pretraining or fine-tuning job on core/torch/train.py (`--engine`), a child of this process: its JSON-line
 * events become the training loop's own, so that whoever listens cannot tell the engines apart. SIGTERM pauses it (it
 * checkpoints, then ends 'paused'); if this process goes, its stdin closes and it does the same. Its files and
 * checkpoints go to the run's folder, or to `dir`.
 */
export async function runTorchJob(
  job: TrainJob,
  hooks: JobHooks,
  torch: TorchReport,
  init?: ReadonlyMap<string, Float32Array>,
  dir = homePaths(job.home).run(job.runId),
): Promise<{ step: number; status: 'finished' | 'paused' }> {
  if (!torch.ok) throw new UserError(`engine: torch is unavailable: ${torch.reason}`);
  const { spec } = job;
  assertTorchCan(spec);
  const config = spec.config;
  mkdirSync(dir, { recursive: true });
  const start = job.resumeFrom ?? join(dir, 'torch-init.safetensors');
  let kind;
  let drawing: Awaited<ReturnType<typeof previewProbes>> | undefined;
  let summary: ModelSummary | undefined;
  let knn: Awaited<ReturnType<typeof knnProbes>> | undefined;
  if (spec.kind === 'pretrain') {
    if (!('items' in job.data)) throw new Error('a torch pretraining job needs unlabeled items');
    if (!job.resumeFrom) await writeInitial(spec.config, start, init);
    const probes = join(dir, 'torch-probes.safetensors');
    drawing = job.previewEvery ? await previewProbes(spec.config, job.data.items, probes) : undefined;
    summary = { family: modelFamily(spec.config.model), targets: targetShapes(spec.config.model) };
    knn = job.probe && (await knnProbes(job.probe, spec.config, job.home, join(dir, 'torch-knn.safetensors')));
    const items = job.data.items.map((it) => ({ path: it.abs }));
    kind = { ...torchSpec(spec.config), items, probes, previewEvery: job.previewEvery, knn: knn?.spec };
  } else {
    if (!('train' in job.data)) throw new Error('a torch fine-tuning job needs a labeled split');
    kind = await finetuneInputs(spec.config, job.data, { torch, dir, start: job.resumeFrom ? undefined : start, init, home: job.home });
  }
  const gpu = torch.devices.length > 0;
  const o = job.torch ?? {};
  const specFile = join(dir, 'torch-job.json');
  writeAtomic(
    specFile,
    JSON.stringify({
      ...kind,
      start,
      out: dir,
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
  if ('val' in kind) rmSync(kind.val, { force: true }); // written again by each launch
  if (result && code === 0) return result;
  const why = stderr.trim().split('\n').at(-1) || `train.py exited with code ${code}`;
  throw new Error(`torch engine: ${why}`);
}

/**
 * What a fine-tuning job hands train.py besides its spec (core/engine.ts torchFinetuneSpec): the labeled training
 * items (decoded and augmented by its loader workers), the validation images decoded here with the evaluation
 * transform (`val`), and for a new run (`start`) the classifier as the tfjs engine starts it: seeded, the backbone of
 * `init`, and with LP-FT the head fitted by the app's one probe on head inputs the torch engine computes.
 */
async function finetuneInputs(
  config: FinetuneRun,
  split: LabeledSplit,
  o: { torch: TorchReport; dir: string; start?: string; init?: ReadonlyMap<string, Float32Array>; home: string },
) {
  const f = config.finetune;
  const cache = new DecodeCache(homePaths(o.home).cache);
  const classifier = classifierFor(
    config.model,
    { classes: config.classes.length, probe: f.linearProbe, scratch: config.from === null },
    config.seed,
  );
  try {
    if (o.init) classifier.params.assign(new Map([...o.init].filter(([name]) => isBackbone(name))));
    if (o.start) {
      if (f.probeInit) await fitHead(classifier, await torchHeadInputs(o.torch, classifier, config.model, split.train, cache), config.seed);
      await saveCheckpoint(o.start, classifier, { step: 0, slots: {} }, { step: 0, epoch: 0, loss: null, config });
    }
    const val = join(o.dir, 'torch-val.safetensors');
    const side = config.model.imgSize;
    const images = await evalImages(split.val, side, cache);
    const pixels = new Float32Array(images.length * side * side * 3);
    images.forEach((img, i) => pixels.set(img.data, i * side * side * 3));
    const tensors = new Map([
      ['images', { shape: [images.length, side, side, 3], values: pixels }],
      ['labels', { shape: [images.length], values: Float32Array.from(split.val, (v) => v.label) }],
    ]);
    writeAtomic(val, encodeSafetensors(tensors, {}));
    return {
      ...torchFinetuneSpec(config, paramGroups(classifier, f.layerDecay)),
      items: split.train.map((it) => ({ path: it.abs, label: it.label })),
      val,
      evaluateFirst: f.probeInit && !!o.start,
    };
  } finally {
    classifier.dispose();
  }
}

/** Images embedded per call of train.py `--embed` (their pixels are handed over in one file). */
const HEAD_INPUT_SHARD = 512;

/**
 * The classifier's head inputs (evaluation mode: `fc_norm` of the backbone's feature) of `items` at the evaluation
 * transform, the backbone's features computed by the torch engine.
 */
async function torchHeadInputs(torch: TorchReport, classifier: Classifier, model: ModelConfig, items: LabeledItem[], cache: DecodeCache) {
  const tensors = new Map<string, NamedTensor>();
  for (const [name, v] of classifier.params.vars) tensors.set(name, { shape: v.shape, values: (await v.data()) as Float32Array });
  const { embed, dispose } = torchEmbedder(torch, tensors, model);
  try {
    const parts: Float32Array[] = [];
    for (let i = 0; i < items.length; i += HEAD_INPUT_SHARD)
      parts.push((await embed(items.slice(i, i + HEAD_INPUT_SHARD), cache)).features);
    const dim = parts[0]!.length / Math.min(items.length, HEAD_INPUT_SHARD);
    const features = new Float32Array(items.length * dim);
    parts.reduce((at, p) => (features.set(p, at), at + p.length), 0);
    const [gamma, beta] = [tensors.get('fc_norm.weight')!.values, tensors.get('fc_norm.bias')!.values];
    for (let r = 0; r < items.length; r++) layerNorm(features.subarray(r * dim, (r + 1) * dim), gamma, beta);
    return { features, dim, labels: items.map((it) => it.label) };
  } finally {
    dispose();
  }
}

/** timm's LayerNorm (ε 1e-6) of one row, in place. */
function layerNorm(x: Float32Array, gamma: Float32Array, beta: Float32Array): void {
  const mean = x.reduce((a, v) => a + v, 0) / x.length;
  const variance = x.reduce((a, v) => a + (v - mean) ** 2, 0) / x.length;
  const inv = 1 / Math.sqrt(variance + 1e-6);
  x.forEach((v, d) => (x[d] = (v - mean) * inv * gamma[d]! + beta[d]!));
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
