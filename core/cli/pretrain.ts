import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describeBackend, initBackend } from '../backend.js';
import { parseRunConfig, PRESETS, type Preset, type RunConfig } from '../config.js';
import { DecodeCache } from '../data/cache.js';
import { Loader } from '../data/loader.js';
import { homeDir, homePaths, isAlive, SAMPLE_IMAGES } from '../home.js';
import { latestGoodCheckpoint, RunRecorder } from '../service/recorder.js';
import { Store, type RunRow } from '../store/store.js';
import type { LoadedCheckpoint } from '../train/checkpoint.js';
import { pretrain, type TrainEvent } from '../train/loop.js';
import { parse, positiveInt, UsageError } from './args.js';
import { indexWithProgress, printSummary } from './index-cmd.js';
import { duration, StatusLine } from './progress.js';

export const summary = 'pretrain a ViT with LocalMIM on a folder (default: the bundled sample images)';

const OPTIONS = {
  data: { type: 'string' },
  preset: { type: 'string' },
  model: { type: 'string' },
  img: { type: 'string' },
  patch: { type: 'string' },
  epochs: { type: 'string' },
  batch: { type: 'string' },
  accum: { type: 'string' },
  blr: { type: 'string' },
  lr: { type: 'string' },
  warmup: { type: 'string' },
  'mask-ratio': { type: 'string' },
  bins: { type: 'string' },
  seed: { type: 'string' },
  config: { type: 'string' },
  name: { type: 'string' },
  resume: { type: 'string' },
  'checkpoint-every': { type: 'string' },
  'checkpoint-minutes': { type: 'string', default: '10' },
  keep: { type: 'string', default: '3' },
  'max-steps': { type: 'string' },
  home: { type: 'string' },
  backend: { type: 'string' },
  json: { type: 'boolean', default: false },
} as const;

type Values = ReturnType<typeof parse<typeof OPTIONS>>['values'];

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
  const line = new StatusLine();
  let runRow: RunRow | undefined;
  try {
    store.markInterrupted(isAlive);
    const backend = await initBackend(values.backend);
    if (!values.json) console.error(describeBackend(backend));

    let config: RunConfig;
    let resumeFrom: LoadedCheckpoint | undefined;
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
    const abort = new AbortController();
    const onSigint = () => {
      if (abort.signal.aborted) process.exit(130);
      abort.abort();
      line.done();
      if (!values.json) console.error('stopping: checkpointing after this step (Ctrl-C again to quit at once)');
    };
    process.on('SIGINT', onSigint);

    const recorder = new RunRecorder(store, runId, positiveInt('keep', values.keep));
    let total = 0;
    const onEvent = (e: TrainEvent) => {
      recorder.handle(e);
      if (e.type === 'start') {
        total = e.totalSteps;
        emit({
          type: 'start',
          runId,
          backend: backend.chosen,
          backendReport: backend,
          config: e.config,
          step: e.step,
          totalSteps: e.totalSteps,
          stepsPerEpoch: e.stepsPerEpoch,
        });
        if (!values.json)
          console.error(`run ${runId}: ${e.totalSteps} steps (${e.stepsPerEpoch} per epoch), from step ${e.step}, data in ${home}`);
      } else if (e.type === 'step') {
        emit({ ...e, runId });
        const eta = ((total - e.step) * config.optim.batch * config.optim.accumIter) / e.imagesPerS;
        line.update(
          `step ${e.step}/${total}  epoch ${e.epoch.toFixed(2)}  loss ${e.loss.toFixed(4)} [${e.losses.map((l) => l.toFixed(3)).join(' ')}]  lr ${e.lr.toExponential(2)}  ${e.imagesPerS.toFixed(1)} img/s  ETA ${duration(eta)}`,
        );
      } else if (e.type === 'checkpoint') {
        emit({ type: 'checkpoint', runId, path: e.path, step: e.step, epoch: e.epoch, loss: e.loss });
      } else {
        line.done();
        emit({ type: 'end', runId, status: e.status, step: e.step });
        if (!values.json)
          console.error(
            e.status === 'finished'
              ? `run ${runId} finished at step ${e.step}`
              : `run ${runId} paused at step ${e.step}: resume with localmim pretrain --resume ${runId}`,
          );
      }
    };
    await pretrain({
      config,
      loader,
      backend: backend.chosen,
      checkpointPath: (step) => paths.checkpoint(runId, step),
      checkpointEverySteps: values['checkpoint-every'] ? positiveInt('checkpoint-every', values['checkpoint-every']) : undefined,
      checkpointEveryMinutes: num(values, 'checkpoint-minutes'),
      stopAtStep: values['max-steps'] ? positiveInt('max-steps', values['max-steps']) : undefined,
      resumeFrom,
      signal: abort.signal,
      onEvent,
    });
    process.off('SIGINT', onSigint);
  } catch (err) {
    line.done();
    if (runRow) store.updateRun(runRow.id, { status: 'failed', pid: null, error: (err as Error).message });
    emit({ type: 'error', runId: runRow?.id ?? null, message: (err as Error).message });
    throw err;
  } finally {
    store.close();
  }
}
