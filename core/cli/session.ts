import { describeBackend, initBackend, type BackendReport } from '../backend.js';
import { describeTorch, ENGINES, probeTorch, resolveEngine, type Engine, type EngineChoice } from '../engine.js';
import { homeDir, homePaths, isAlive, SAMPLE_IMAGES } from '../home.js';
import { runTrainJob } from '../runs/job.js';
import { begin, prepare, type RunRequest } from '../runs/lifecycle.js';
import { recheckDataset } from '../runs/recheck.js';
import { recoverRuns } from '../runs/reconcile.js';
import { RunRecorder } from '../runs/recorder.js';
import { assertTorchCan } from '../runs/torch.js';
import { optimOf } from '../runs/spec.js';
import { Store } from '../store/store.js';
import type { Cadence, TrainEvent } from '../train/loop.js';
import { homeFlag, parse, positiveInt, UsageError, type Flags } from './args.js';
import { indexFlags, indexOptions, indexWithProgress, printSummary } from './index-cmd.js';
import { duration, StatusLine } from './progress.js';

/** How often a terminal run checkpoints and how many checkpoints it keeps. */
export const cadenceFlags = {
  'checkpoint-every': { type: 'string', arg: 'N', help: 'checkpoint every N optimizer steps (and at each epoch end)' },
  'checkpoint-minutes': { type: 'string', arg: 'M', default: '5', help: 'checkpoint once M minutes have passed since the last one' },
  keep: { type: 'string', arg: 'K', default: '3', help: 'checkpoints kept (plus the one with the lowest loss)' },
  'max-steps': { type: 'string', arg: 'N', help: 'checkpoint and stop (paused) after optimizer step N' },
} as const satisfies Flags;

export const resumeFlags = {
  resume: { type: 'string', arg: 'ID', help: 'continue run ID from its newest intact checkpoint' },
  restart: { type: 'boolean', default: false, help: 'with --resume: start over from step 0 when no checkpoint can be read' },
} as const satisfies Flags;

/** `--resume ID [--restart]`, checked; undefined for a new run. */
export function resumeOf(values: { resume?: string; restart?: boolean }): { resume: number; restart: boolean } | undefined {
  if (values.restart && values.resume === undefined) throw new UsageError('--restart goes with --resume ID');
  return values.resume === undefined ? undefined : { resume: positiveInt('resume', values.resume), restart: values.restart ?? false };
}

export const sessionFlags = {
  home: homeFlag,
  backend: { type: 'string', arg: 'NAME', help: 'force a compute backend (see localmim doctor)' },
  engine: {
    type: 'string',
    arg: 'NAME',
    help: 'tfjs, torch (PyTorch, see localmim doctor) or auto: torch where it has a GPU (default tfjs)',
  },
  amp: { type: 'boolean', default: false, help: 'torch engine on CUDA: bf16 mixed precision (faster, not bit-comparable)' },
  json: { type: 'boolean', default: false, help: 'print one JSON event per line: start, step, eval, knn, checkpoint, end, error' },
} as const satisfies Flags;

/** `--engine`, checked, and resolved (see resolveEngine); torch must be there. */
function engineOf(value: EngineChoice | undefined, previous?: string | null): Engine {
  const engine = resolveEngine(value, probeTorch, previous);
  const torch = engine === 'torch' ? probeTorch() : undefined;
  if (torch && !torch.ok) throw new UsageError(`--engine torch: ${torch.reason}`);
  return engine;
}

type SessionValues = Partial<ReturnType<typeof parse<typeof cadenceFlags & typeof sessionFlags & typeof indexFlags>>['values']>;

function minutes(value: string): number {
  const m = Number(value);
  if (value.trim() === '' || !Number.isFinite(m) || m <= 0)
    throw new UsageError(`--checkpoint-minutes: expected a positive number of minutes, got "${value}"`);
  return m;
}

/**
 * A training run in this process, as a job process would run it: flags checked, then the request built (which
 * may index a folder), prepared (validated, no side effect) and begun (the run claimed), then the very job the
 * app runs, recorded in the store and shown in the terminal.
 */
export async function runInTerminal(
  values: SessionValues,
  o: {
    command: string;
    /** Continue this run instead of starting one. */
    resume?: { resume: number; restart: boolean };
    /** The folder a new run trains on, indexed first (a resumed run's own, re-checked, unless given); and the run to start on it. */
    data?: string;
    /** A labeled folder for the kNN monitor, indexed too. */
    probeData?: string;
    newRun: (datasetId: number, probeDatasetId?: number) => RunRequest;
  },
): Promise<void> {
  const cadence: Cadence = {
    everySteps: values['checkpoint-every'] === undefined ? undefined : positiveInt('checkpoint-every', values['checkpoint-every']),
    everyMinutes: minutes(values['checkpoint-minutes'] ?? '5'),
  };
  const keep = positiveInt('keep', values.keep ?? '3');
  const stopAtStep = values['max-steps'] === undefined ? undefined : positiveInt('max-steps', values['max-steps']);
  const indexing = indexOptions(values);
  const json = values.json ?? false;
  const choice = values.engine as EngineChoice | undefined;
  if (choice !== undefined && ![...ENGINES, 'auto'].includes(choice))
    throw new UsageError(`--engine: expected tfjs, torch or auto, got "${choice}"`);
  const log = (text: string) => !json && console.error(text);
  const home = homeDir(values.home);
  const store = new Store(homePaths(home).db);
  let runId: number | undefined;
  try {
    store.markInterrupted(isAlive);
    for (const line of recoverRuns(store, home)) console.error(line);
    const backend = await initBackend(values.backend);
    log(describeBackend(backend));
    let request: RunRequest;
    if (o.resume) {
      const index = (root: string) => indexWithProgress(store, root, { ...indexing, quiet: json });
      const check = await recheckDataset(store, o.resume.resume, o.data, index);
      if (check?.line) log(check.line);
      request = { ...o.resume, datasetId: check?.datasetId };
    } else {
      const indexed = await indexWithProgress(store, o.data ?? SAMPLE_IMAGES, { ...indexing, quiet: json });
      if (!json) printSummary(indexed);
      const probe = o.probeData === undefined ? undefined : await indexWithProgress(store, o.probeData, { quiet: json });
      if (probe && !json) printSummary(probe);
      request = o.newRun(indexed.datasetId, probe?.datasetId);
    }
    const engine = engineOf(choice, o.resume && store.run(o.resume.resume)?.backend);
    if (engine === 'torch') log(`engine    ${describeTorch(probeTorch())}`);
    const on = engine === 'torch' ? 'torch' : backend.chosen;
    const prepared = prepare(store, home, request, on);
    if (engine === 'torch') assertTorchCan(prepared.spec, prepared.job.probe);
    const claimed = begin(store, prepared, { pid: process.pid, status: 'running', backend: on });
    const job = { ...claimed, cadence, stopAtStep, engine, torch: { amp: values.amp } };
    runId = job.runId;
    if ('train' in job.data)
      log(`${job.spec.config.model.imgSize} px; ${job.data.train.length} training and ${job.data.val.length} validation images`);
    const { batch, accumIter } = optimOf(job.spec);
    const session = terminalSession({
      store,
      runId,
      json,
      keep,
      backend,
      home,
      imagesPerStep: batch * accumIter,
      resume: `localmim ${o.command} --resume ${runId}`,
    });
    try {
      const warn = (m: string) => {
        session.line.done();
        log(`warning: ${m}`);
      };
      await runTrainJob(job, { signal: session.signal, onEvent: session.onEvent, warn });
    } finally {
      session.close();
    }
  } catch (err) {
    if (runId !== undefined) failed(store, runId, err as Error);
    throw err;
  } finally {
    store.close();
  }
}

/**
 * Marks the run failed and names it on the error (main.ts's `error` event carries it). The store may be what failed
 * (a full disk): the error that stopped the run is the one reported, either way.
 */
function failed(store: Store, runId: number, err: Error): void {
  Object.assign(err, { runId });
  try {
    store.updateRun(runId, { status: 'failed', pid: null, error: err.message });
  } catch {
    // Reported as the original error; the run is marked interrupted at the next start.
  }
}

/**
 * A training run in the terminal: records its events in the store, prints them (a progress line, or one
 * JSON object per line with --json), and turns the first Ctrl-C into "checkpoint and stop".
 */
function terminalSession(o: {
  store: Store;
  runId: number;
  json: boolean;
  keep: number;
  backend: BackendReport;
  home: string;
  imagesPerStep: number;
  resume: string;
}) {
  const line = new StatusLine();
  const emit = (e: object) => o.json && console.log(JSON.stringify({ ...e, runId: o.runId }));
  const say = (text: string) => !o.json && console.error(text);
  const recorder = new RunRecorder(o.store, o.runId, o.keep);
  const abort = new AbortController();
  const onSigint = () => {
    if (abort.signal.aborted) process.exit(130);
    abort.abort();
    line.done();
    say('stopping: checkpointing after this step (Ctrl-C again to quit at once)');
  };
  process.on('SIGINT', onSigint);
  let total = 0;

  const onEvent = (e: TrainEvent) => {
    recorder.handle(e);
    if (e.type === 'start') {
      total = e.totalSteps;
      emit({
        type: 'start',
        engine: e.backend.startsWith('torch') ? 'torch' : 'tfjs',
        backend: e.backend,
        backendReport: o.backend,
        config: e.config,
        model: e.model,
        step: e.step,
        totalSteps: e.totalSteps,
        stepsPerEpoch: e.stepsPerEpoch,
      });
      say(`run ${o.runId}: ${e.totalSteps} steps (${e.stepsPerEpoch} per epoch), from step ${e.step}, data in ${o.home}`);
    } else if (e.type === 'step') {
      emit(e);
      const scales = e.losses.length ? ` [${e.losses.map((l) => l.toFixed(3)).join(' ')}]` : '';
      const eta = ((total - e.step) * o.imagesPerStep) / e.imagesPerS;
      if (!o.json)
        line.update(
          `step ${e.step}/${total}  epoch ${e.epoch.toFixed(2)}  loss ${e.loss.toFixed(4)}${scales}  lr ${e.lr.toExponential(2)}  ${e.imagesPerS.toFixed(1)} img/s  ETA ${duration(eta)}`,
        );
    } else if (e.type === 'eval') {
      emit(e);
      line.done();
      say(`epoch ${e.epoch.toFixed(0)}: validation top-1 ${(100 * e.top1).toFixed(1)} %, loss ${e.loss.toFixed(4)}`);
    } else if (e.type === 'knn') {
      emit(e);
      line.done();
      say(`step ${e.step}: kNN top-1 ${(100 * e.top1).toFixed(1)} %, top-5 ${(100 * e.top5).toFixed(1)} % (${e.seconds.toFixed(1)} s)`);
    } else if (e.type === 'checkpoint') {
      emit({ type: 'checkpoint', path: e.path, step: e.step, epoch: e.epoch, loss: e.loss });
    } else if (e.type === 'skipped') {
      emit(e); // the terminal shows it as a warning
    } else {
      line.done();
      emit({ type: 'end', status: e.status, step: e.step });
      say(
        e.status === 'finished'
          ? `run ${o.runId} finished at step ${e.step}`
          : `run ${o.runId} paused at step ${e.step}: resume with ${o.resume}`,
      );
    }
  };
  return { onEvent, signal: abort.signal, line, close: () => process.off('SIGINT', onSigint) };
}
