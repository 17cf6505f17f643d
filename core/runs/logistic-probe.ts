import { join } from 'node:path';
import { embedFolder, readEmbeddings } from '../analysis/embed.js';
import { fitLinearProbe, layerNormRows, probeCrossEntropy, probeTop1, type Embedded, type LinearHead } from '../analysis/linear-probe.js';
import type { ModelConfig } from '../config.js';
import { detectTorch, type TorchReport } from '../engine.js';
import type { FinetuneRun } from '../finetune-config.js';
import type { DecodeCache } from '../data/cache.js';
import { homePaths } from '../home.js';
import { classifierFor, isBackbone, PROBE_EPS, type Classifier, type ProbeFeatures } from '../model/classifier.js';
import type { ParamStore } from '../model/module.js';
import type { NamedTensor } from '../safetensors.js';
import type { ProbeResult } from '../store/store.js';
import { saveCheckpoint, type LoadedCheckpoint } from '../train/checkpoint.js';
import { cacheKey, cachedTop1, initialBackbone, pixelBaseline, sourceSeed, splitKey } from './baselines.js';
import { torchEmbedder } from './torch.js';
import type { JobHooks, LabeledItem, TrainJob } from './train-job.js';

/** Labeled rows of a split's two parts: what every probe here fits and scores. */
interface Split {
  train: Embedded;
  val: Embedded;
}

/**
 * A logistic linear probe run (core/analysis/linear-probe.ts): the frozen backbone's features of the split, embedded
 * once per checkpoint under `<home>/embeddings`, the fit, and its top-1 on the validation images beside the same probe
 * of raw pixels and of the backbone at its initialisation (each cached per split, input size and seed). The checkpoint
 * holds the fit as MAE's probe head: `head.0` BatchNorm statistics = the standardisation, `head.1` = the weights.
 */
export async function runLogisticProbe(job: TrainJob, hooks: JobHooks, cache: DecodeCache, source?: LoadedCheckpoint) {
  if (job.spec.kind !== 'finetune' || !('train' in job.data)) throw new Error('a linear probe needs a labeled split');
  const started = performance.now();
  const { config } = job.spec;
  const { data } = job;
  const kind = config.finetune.probeFeatures;
  hooks.onEvent({ type: 'start', step: 0, totalSteps: 1, stepsPerEpoch: 1, backend: job.backend, config });
  const model = classifierFor(config.model, { classes: config.classes.length, probe: true, scratch: config.from === null }, config.seed);
  try {
    if (source) model.params.assign(new Map([...source.tensors].filter(([n]) => isBackbone(n)).map(([n, t]) => [n, t.values])));
    const weights = source?.hash ?? initWeights(config);
    const torch = job.engine === 'torch' ? detectTorch() : undefined;
    const split = await backboneSplit(model.params, config.model, data, kind, { home: job.home, weights, cache, torch });
    const fit = await fitLinearProbe(split.train, config.classes.length, { seed: config.seed });
    const top1 = probeTop1(fit.head, split.val);
    const baselines = await probeBaselines(job, cache, torch);
    if (kind === 'last') setProbeHead(model, fit.head);
    const loss = probeCrossEntropy(fit.head, split.train);
    const n = data.train.length;
    const imagesPerS = n / ((performance.now() - started) / 1000);
    hooks.onEvent({ type: 'step', step: 1, epoch: 1, samples: n, loss, losses: [], lr: 0, imagesPerS });
    hooks.onEvent({ type: 'eval', step: 1, epoch: 1, top1, loss: probeCrossEntropy(fit.head, split.val) });
    const path = homePaths(job.home).checkpoint(job.runId, 1);
    const noOptimizer = { step: 0, slots: {}, apply: () => undefined, dispose: () => undefined };
    const written = await saveCheckpoint(path, model, noOptimizer, { step: 1, epoch: 1, loss, config });
    hooks.onEvent({ type: 'checkpoint', path, step: 1, epoch: 1, loss, ...written });
    const seconds = (performance.now() - started) / 1000;
    const result: ProbeResult = {
      top1,
      baselines,
      lambda: fit.lambda,
      holdoutTop1: fit.holdoutTop1,
      features: kind,
      dims: split.train.dim,
      seconds,
    };
    hooks.onEvent({ type: 'probe', ...result });
    hooks.onEvent({ type: 'end', status: 'finished', step: 1 });
    return { step: 1, status: 'finished' as const };
  } finally {
    model.dispose();
  }
}

/**
 * The backbone's probe features of the split: embedded through the cache (on the torch engine with `torch`, keyed
 * apart), then each block's through fc_norm's LayerNorm.
 */
async function backboneSplit(
  params: ParamStore,
  model: ModelConfig,
  data: { train: LabeledItem[]; val: LabeledItem[] },
  kind: ProbeFeatures,
  o: { home: string; weights: string; cache: DecodeCache; torch?: TorchReport },
): Promise<Split> {
  const items = [...data.train, ...data.val].map((it) => ({ abs: it.abs, hash: it.hash, path: it.abs, label: String(it.label) }));
  const weights = o.torch ? `${o.weights}:torch` : o.weights;
  const key = cacheKey(weights, kind, ...items.map((it) => it.hash));
  const out = join(o.home, 'embeddings', `probe-${key.slice(0, 24)}.safetensors`);
  const P = (name: string) => params.get(name);
  const torch = o.torch && torchEmbedder(o.torch, await backboneTensors(params), model);
  try {
    await embedFolder(P, model, items, { out, weights, cache: o.cache, features: kind, embed: torch?.embed });
  } finally {
    torch?.dispose();
  }
  const e = readEmbeddings(out);
  const segment = kind === 'last' ? e.dim : e.dim / 4;
  return splitRows({ ...e, features: layerNormRows(e.features, segment) }, data);
}

async function backboneTensors(params: ParamStore): Promise<Map<string, NamedTensor>> {
  const named = [...params.vars].filter(([name]) => isBackbone(name));
  return new Map(
    await Promise.all(named.map(async ([name, v]) => [name, { shape: v.shape, values: (await v.data()) as Float32Array }] as const)),
  );
}

function splitRows(e: { features: Float32Array; dim: number }, data: { train: LabeledItem[]; val: LabeledItem[] }): Split {
  const n = data.train.length;
  return {
    train: { features: e.features.subarray(0, n * e.dim), dim: e.dim, labels: data.train.map((t) => t.label) },
    val: { features: e.features.subarray(n * e.dim), dim: e.dim, labels: data.val.map((t) => t.label) },
  };
}

/** What names a run's untrained backbone: its seed and model (the init `finetune --scratch` builds). */
const initWeights = (config: FinetuneRun) => `init:${config.seed}:${JSON.stringify(config.model)}`;

/**
 * The same probe, on the same split, of (a) the raw pixels at the model's input size (the evaluation transform, RGB
 * flattened) and (b) the backbone at its initialisation (as the source run started: initialBackbone). Each is cached under `<home>/embeddings/baselines` by what it
 * depends on: the split's images and labels, the input size, the seed (and for (b) the model and features).
 */
async function probeBaselines(job: TrainJob, cache: DecodeCache, torch?: TorchReport): Promise<{ pixels: number; init: number }> {
  if (job.spec.kind !== 'finetune' || !('train' in job.data)) throw new Error('a linear probe needs a labeled split');
  const { config } = job.spec;
  const data = job.data;
  const { seed, classes } = config;
  const { imgSize } = config.model;
  const kind = config.finetune.probeFeatures;
  const fitted = async (split: () => Promise<Split>) => {
    const s = await split();
    const fit = await fitLinearProbe(s.train, classes.length, { seed });
    return probeTop1(fit.head, s.val);
  };
  const pixels = await pixelBaseline(job.home, data, classes.length, imgSize, seed, cache);
  const weights = `${initWeights(config)}:${sourceSeed(job.initFrom) ?? ''}`;
  const init = await cachedTop1(job.home, cacheKey('init', weights, kind, splitKey(data)), async () => {
    const model = classifierFor(config.model, { classes: classes.length, probe: true, scratch: config.from === null }, seed);
    try {
      if (config.from) model.params.assign(await initialBackbone(config.model, job.initFrom, seed));
      return await fitted(() => backboneSplit(model.params, config.model, data, kind, { home: job.home, weights, cache, torch }));
    } finally {
      model.dispose();
    }
  });
  return { pixels, init };
}

/**
 * The fit as MAE's probe head of the classifier: BatchNorm `head.0` (no affine) normalises exactly as the fit's
 * standardisation when its running variance is `std² − eps`; Linear `head.1` holds the weights, `[K, D]`.
 */
function setProbeHead(model: Classifier, head: LinearHead): void {
  const K = head.bias.length;
  const D = head.mean.length;
  const weight = new Float32Array(K * D);
  for (let d = 0; d < D; d++) for (let k = 0; k < K; k++) weight[k * D + d] = head.weight[d * K + k]!;
  model.params.assign(
    new Map([
      ['head.0.running_mean', head.mean],
      ['head.0.running_var', head.std.map((s) => s * s - PROBE_EPS)],
      ['head.1.weight', weight],
      ['head.1.bias', head.bias],
    ]),
  );
}
