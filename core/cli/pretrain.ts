import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describeBackend, initBackend } from '../backend.js';
import { parseRunConfig, PRESETS, type Preset, type RunConfig } from '../config.js';
import { DecodeCache } from '../data/cache.js';
import { Loader } from '../data/loader.js';
import { homeDir, homePaths, isAlive, SAMPLE_IMAGES } from '../home.js';
import { backboneOf } from '../export/backbone.js';
import { checkpointFor, latestGoodCheckpoint } from '../service/recorder.js';
import { Store, type RunRow } from '../store/store.js';
import type { LoadedCheckpoint } from '../train/checkpoint.js';
import { pretrain } from '../train/loop.js';
import { parse, positiveInt, strings, UsageError } from './args.js';
import { indexWithProgress, printSummary } from './index-cmd.js';
import { terminalSession } from './session.js';

export const summary = 'pretrain a ViT with LocalMIM on a folder (default: the bundled sample images)';

const OPTIONS = {
  ...strings('data', 'preset', 'model', 'img', 'patch', 'epochs', 'batch', 'accum', 'blr', 'lr', 'warmup', 'mask-ratio', 'bins', 'seed'),
  ...strings('config', 'name', 'resume', 'init', 'checkpoint-every', 'max-steps', 'home', 'backend'),
  'checkpoint-minutes': { type: 'string', default: '10' },
  keep: { type: 'string', default: '3' },
  json: { type: 'boolean', default: false },
} as const;

type Values = Partial<ReturnType<typeof parse<typeof OPTIONS>>['values']>;

function num(values: Values, flag: keyof Values): number | undefined {
  const v = values[flag];
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new UsageError(`--${flag}: expected a number, got "${v}"`);
  return n;
}

/** CLI defaults sized for a CPU and the sample images, then preset, then --config file, then flags. */
export function configFromFlags(values: Values): RunConfig {
  const preset = (values.preset ?? 'localmim-hog') as Preset;
  if (!(preset in PRESETS)) throw new UsageError(`--preset: unknown preset "${preset}" (choose ${Object.keys(PRESETS).join(', ')})`);
  let file: { model?: object; optim?: object; seed?: number } = {};
  if (values.config) {
    try {
      file = JSON.parse(readFileSync(values.config, 'utf8'));
    } catch (err) {
      throw new UsageError(`--config: cannot read ${values.config} as JSON (${(err as Error).message})`);
    }
  }
  const defined = (o: Record<string, unknown>) => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));
  return parseRunConfig({
    model: {
      size: 'vit-tiny',
      imgSize: 64,
      patchSize: 8,
      ...PRESETS[preset],
      ...file.model,
      ...defined({
        size: values.model,
        imgSize: num(values, 'img'),
        patchSize: num(values, 'patch'),
        maskRatio: num(values, 'mask-ratio'),
        nbins: num(values, 'bins'),
      }),
    },
    optim: {
      ...file.optim,
      ...defined({
        epochs: num(values, 'epochs'),
        batch: num(values, 'batch'),
        accumIter: num(values, 'accum'),
        blr: num(values, 'blr'),
        lr: num(values, 'lr'),
        warmupEpochs: num(values, 'warmup'),
      }),
    },
    seed: num(values, 'seed') ?? file.seed ?? 0,
  });
}

export async function run(argv: string[]): Promise<void> {
  const { values } = parse(argv, OPTIONS);
  const home = homeDir(values.home);
  const paths = homePaths(home);
  const store = new Store(paths.db);
  const emit = values.json ? (e: object) => console.log(JSON.stringify(e)) : () => {};
  let runRow: RunRow | undefined;
  try {
    store.markInterrupted(isAlive);
    const backend = await initBackend(values.backend);
    if (!values.json) console.error(describeBackend(backend));

    let config: RunConfig;
    let resumeFrom: LoadedCheckpoint | undefined;
    let init: Map<string, Float32Array> | undefined;
    let root: string;
    if (values.resume) {
      runRow = store.run(positiveInt('resume', values.resume));
      if (!runRow) throw new UsageError(`--resume: no run ${values.resume} in ${paths.db}`);
      if (runRow.status === 'running' && runRow.pid !== process.pid)
        throw new Error(`run ${runRow.id}: still running in process ${runRow.pid}`);
      config = parseRunConfig(runRow.config);
      const dataset = runRow.datasetId === null ? undefined : store.datasetById(runRow.datasetId);
      if (!dataset) throw new Error(`run ${runRow.id}: its dataset is no longer recorded`);
      root = dataset.root;
      resumeFrom = latestGoodCheckpoint(store, runRow.id);
      store.truncateMetrics(runRow.id, resumeFrom?.state.step ?? 0);
      store.updateRun(runRow.id, { status: 'running', pid: process.pid, backend: backend.chosen, error: null });
    } else {
      config = configFromFlags(values);
      root = values.data ?? SAMPLE_IMAGES;
      if (values.init) {
        // Continue from an earlier or imported backbone: its shape wins; decoders start fresh.
        const source = checkpointFor(store, values.init);
        const b = backboneOf(source.run, source.checkpoint);
        config = parseRunConfig({
          ...config,
          model: { ...config.model, ...pick(b.model, ['size', 'D', 'depth', 'heads', 'patchSize', 'imgSize', 'mlpRatio']) },
        });
        init = new Map([...b.tensors].filter(([n]) => !n.startsWith('fc_norm.') && !n.startsWith('head.')).map(([n, t]) => [n, t.values]));
      }
    }

    const indexed = await indexWithProgress(store, root, { quiet: values.json });
    if (!values.json) printSummary(indexed);
    const items = store.images(indexed.datasetId, 'ok').map((r) => ({ abs: join(indexed.root, r.path), hash: r.hash! }));
    const loader = new Loader(items, new DecodeCache(paths.cache), config.model.imgSize, config.optim.batch, config.seed);

    runRow ??= store.createRun({
      name: values.name ?? `${config.model.size} ${config.model.variant} ${config.model.target}`,
      datasetId: indexed.datasetId,
      config,
      backend: backend.chosen,
    });
    const runId = runRow.id;
    const session = terminalSession({
      store,
      runId,
      json: values.json,
      keep: positiveInt('keep', values.keep),
      backend,
      home,
      imagesPerStep: config.optim.batch * config.optim.accumIter,
      resume: `localmim pretrain --resume ${runId}`,
    });
    await pretrain({
      config,
      loader,
      backend: backend.chosen,
      checkpointPath: (step) => paths.checkpoint(runId, step),
      checkpointEverySteps: values['checkpoint-every'] ? positiveInt('checkpoint-every', values['checkpoint-every']) : undefined,
      checkpointEveryMinutes: num(values, 'checkpoint-minutes'),
      stopAtStep: values['max-steps'] ? positiveInt('max-steps', values['max-steps']) : undefined,
      resumeFrom,
      init,
      signal: session.signal,
      onEvent: session.onEvent,
    });
    session.close();
  } catch (err) {
    if (runRow) store.updateRun(runRow.id, { status: 'failed', pid: null, error: (err as Error).message });
    emit({ type: 'error', runId: runRow?.id ?? null, message: (err as Error).message });
    throw err;
  } finally {
    store.close();
  }
}

const pick = <T extends object, K extends keyof T>(o: T, keys: K[]) => Object.fromEntries(keys.map((k) => [k, o[k]])) as Pick<T, K>;
