import { join } from 'node:path';
import { initBackend } from '../backend.js';
import { FinetuneRunSchema, parseRunConfig, type FinetuneRun } from '../config.js';
import { DecodeCache } from '../data/cache.js';
import { labeledSplit } from '../data/labels.js';
import { Loader } from '../data/loader.js';
import { homeDir, homePaths, isAlive } from '../home.js';
import { checkpointFor, latestGoodCheckpoint } from '../service/recorder.js';
import { Store } from '../store/store.js';
import type { LoadedCheckpoint } from '../train/checkpoint.js';
import { finetune } from '../train/finetune.js';
import { parse, positiveInt, strings, UsageError } from './args.js';
import { indexWithProgress, printSummary } from './index-cmd.js';
import { configFromFlags } from './pretrain.js';
import { terminalSession } from './session.js';

export const summary = 'fine-tune (or --linear-probe) a pretrained run on a labeled folder: localmim finetune --from RUN[:STEP] --data DIR';

const OPTIONS = {
  ...strings(
    'from',
    'data',
    'epochs',
    'batch',
    'blr',
    'layer-decay',
    'drop-path',
    'smoothing',
    'mixup',
    'cutmix',
    'val-fraction',
    'warmup',
  ),
  ...strings('seed', 'model', 'img', 'patch', 'name', 'resume', 'home', 'backend'),
  scratch: { type: 'boolean', default: false },
  'linear-probe': { type: 'boolean', default: false },
  keep: { type: 'string', default: '2' },
  json: { type: 'boolean', default: false },
} as const;

export async function run(argv: string[]): Promise<void> {
  const { values } = parse(argv, OPTIONS);
  const home = homeDir(values.home);
  const paths = homePaths(home);
  const store = new Store(paths.db);
  let runId: number | undefined;
  try {
    store.markInterrupted(isAlive);
    const backend = await initBackend(values.backend);
    let config: FinetuneRun;
    let root: string;
    let init: Map<string, Float32Array> | undefined;
    let resumeFrom: LoadedCheckpoint | undefined;
    if (values.resume) {
      const row = store.run(positiveInt('resume', values.resume));
      if (!row || row.kind !== 'finetune') throw new UsageError(`--resume: run ${values.resume} is not a fine-tuning run`);
      config = FinetuneRunSchema.parse(row.config);
      root = store.datasetById(row.datasetId ?? 0)?.root ?? '';
      resumeFrom = latestGoodCheckpoint(store, row.id);
      if (!resumeFrom && config.from) init = weights(checkpointFor(store, `${config.from.runId}:${config.from.step}`).checkpoint);
      store.truncateMetrics(row.id, resumeFrom?.state.step ?? 0);
      store.updateRun(row.id, { status: 'running', pid: process.pid, backend: backend.chosen, error: null });
      runId = row.id;
    } else {
      if (!values.data) throw new UsageError('--data DIR (a folder with one sub-folder per class) is required');
      if (!values.from === !values.scratch)
        throw new UsageError('give --from RUN[:STEP] to fine-tune a pretrained run, or --scratch for the baseline');
      root = values.data;
      const source = values.from ? checkpointFor(store, values.from) : undefined;
      const model = source
        ? parseRunConfig(source.run.config).model
        : configFromFlags({ model: values.model, img: values.img, patch: values.patch }).model;
      init = source && weights(source.checkpoint);
      const num = (flag: keyof typeof values) => (values[flag] === undefined ? undefined : Number(values[flag]));
      const defined = (o: Record<string, unknown>) => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));
      const finetuneInput = defined({
        epochs: num('epochs'),
        batch: num('batch'),
        blr: num('blr'),
        layerDecay: num('layer-decay'),
        dropPath: num('drop-path'),
        smoothing: num('smoothing'),
        mixup: num('mixup'),
        cutmix: num('cutmix'),
        valFraction: num('val-fraction'),
        warmupEpochs: num('warmup'),
        linearProbe: values['linear-probe'] || undefined,
      });
      const indexed = await indexWithProgress(store, root, { quiet: values.json });
      if (!values.json) printSummary(indexed);
      const seed = num('seed') ?? 0;
      const split = labeledSplit(
        store.images(indexed.datasetId),
        FinetuneRunSchema.shape.finetune.parse(finetuneInput).valFraction,
        seed,
        root,
      );
      config = FinetuneRunSchema.parse({
        model,
        finetune: finetuneInput,
        seed,
        classes: split.classes,
        from: source ? { runId: source.run.id, step: source.step } : null,
      });
      const kind = config.finetune.linearProbe ? 'linear probe' : 'fine-tune';
      runId = store.createRun({
        name: values.name ?? `${kind} of ${source ? `run ${source.run.id}` : 'scratch'} on ${indexed.root.split('/').at(-1)}`,
        datasetId: indexed.datasetId,
        config,
        backend: backend.chosen,
        kind: 'finetune',
        parentId: source?.run.id ?? null,
      }).id;
    }

    const indexed = await indexWithProgress(store, root, { quiet: true });
    const split = labeledSplit(store.images(indexed.datasetId), config.finetune.valFraction, config.seed, root);
    if (split.classes.join('\n') !== config.classes.join('\n'))
      throw new Error(`data: the classes of ${root} changed since the run started`);
    const abs = (p: string) => join(indexed.root, p);
    const cache = new DecodeCache(paths.cache);
    const loader = new Loader(
      split.train.map((t) => ({ abs: abs(t.path), hash: t.hash })),
      cache,
      config.model.imgSize,
      config.finetune.batch,
      config.seed,
      2,
      config.finetune.minScale,
    );
    if (!values.json)
      console.error(`${split.classes.length} classes: ${split.train.length} training and ${split.val.length} validation images`);
    const session = terminalSession({
      store,
      runId,
      json: values.json,
      keep: positiveInt('keep', values.keep),
      backend,
      home,
      imagesPerStep: config.finetune.batch * config.finetune.accumIter,
      resume: `localmim finetune --resume ${runId}`,
    });
    const result = await finetune({
      config,
      loader,
      trainLabels: split.train.map((t) => t.label),
      val: split.val.map((v) => ({ abs: abs(v.path), hash: v.hash, label: v.label })),
      cache,
      init,
      resumeFrom,
      backend: backend.chosen,
      checkpointPath: (step) => paths.checkpoint(runId!, step),
      signal: session.signal,
      onEvent: session.onEvent,
    });
    session.close();
    if (!values.json && result.top1 !== null) console.error(`validation top-1: ${(100 * result.top1).toFixed(1)} %`);
  } catch (err) {
    if (runId) store.updateRun(runId, { status: 'failed', pid: null, error: (err as Error).message });
    if (values.json) console.log(JSON.stringify({ type: 'error', runId: runId ?? null, message: (err as Error).message }));
    throw err;
  } finally {
    store.close();
  }
}

const weights = (c: LoadedCheckpoint) => new Map([...c.tensors].map(([n, t]) => [n, t.values]));
