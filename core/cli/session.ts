import { describeBackend, initBackend, type BackendReport } from '../backend.js';
import { describeTorch, ENGINES, detectTorch, resolveEngine, type Engine, type EngineChoice } from '../engine.js';
import { homeDir, homePaths, isAlive, SAMPLE_IMAGES } from '../home.js';
import { runTrainJob } from '../runs/job.js';
import { begin, prepare, type RunRequest } from '../runs/lifecycle.js';
import { recheckDataset } from '../runs/recheck.js';
import { recoverRuns } from '../runs/reconcile.js';
import { RunRecorder } from '../runs/recorder.js';
import { assertTorchCan } from '../runs/torch.js';
import { optimOf } from '../runs/spec.js';
import { ResumeOverridesSchema, type ResumeOverrides } from '../config.js';
import { Store } from '../store/store.js';
import type { Cadence, TrainEvent } from '../train/loop.js';
import { homeFlag, nonNegativeInt, parse, positiveInt, UsageError, type Flags } from './args.js';
import { indexFlags, indexOptions, indexWithProgress, printSummary } from './index-cmd.js';
import { duration, pct, probeSummary, resultLine, StatusLine } from './progress.js';

/** How often a terminal run checkpoints and how many checkpoints it keeps. */
export const cadenceFlags = {
  'checkpoint-every': { type: 'string', arg: 'N', help: 'checkpoint every N optimizer steps (and at each epoch end)' },
  'checkpoint-minutes': { type: 'string', arg: 'M', help: 'checkpoint once M minutes have passed since the last one (default 5)' },
  keep: { type: 'string', arg: 'K', default: '3', help: 'checkpoints kept (plus the one with the lowest loss)' },
  'max-steps': { type: 'string', arg: 'N', help: 'checkpoint and stop (paused) after optimizer step N' },
} as const satisfies Flags;

export const resumeFlags = {
  resume: {
    type: 'string',
    arg: 'RUN[:STEP]',
    help: 'continue run RUN from its newest intact checkpoint, or from the one at STEP (what came after it is set aside); --epochs, --blr, --lr, --min-lr and --warmup change its schedule from there',
  },
  restart: { type: 'boolean', default: false, help: 'with --resume: start over from step 0 when no checkpoint can be read' },
} as const satisfies Flags;

export const sessionFlags = {
  home: homeFlag,
  backend: { type: 'string', arg: 'NAME', help: 'force a compute backend (see localmim doctor)' },
  engine: {
    type: 'string',
    arg: 'NAME',
    help: 'tfjs, torch (PyTorch, see localmim doctor) or auto: torch where it has a GPU (default tfjs)',
  },
  amp: { type: 'boolean', default: false, help: 'torch engine on CUDA: bf16 mixed precision (faster, not bit-comparable)' },
  json: {
    type: 'boolean',
    default: false,
    help: 'print one JSON event per line: start, step, eval, knn, checkpoint, end, finetune (last), error',
  },
} as const satisfies Flags;

/** The flags that change a resumed run's schedule, and the setting each sets (core/config.ts ResumeOverridesSchema). */
const OVERRIDE_FLAGS = { epochs: 'epochs', blr: 'blr', lr: 'lr', 'min-lr': 'minLr', warmup: 'warmupEpochs' } as const;
const EXPECTED = {
  epochs: 'a whole number of epochs',
  blr: 'a positive number',
  lr: 'a positive number',
  minLr: 'a number ≥ 0',
  warmupEpochs: 'a number of epochs ≥ 0',
};

/** Flags a resumed run takes besides those: where its images are, how it runs and checkpoints, how it prints. */
const RESUME_TAKES = new Set(['data', ...Object.keys({ ...resumeFlags, ...cadenceFlags, ...sessionFlags, ...indexFlags })]);

export type Resume = Extract<RunRequest, { resume: number }>;

/**
 * `--resume RUN[:STEP] [--restart]` and the schedule flags, checked; undefined for a new run. Any other flag of
 * `options` given with it is refused by name: it would not continue the same run.
 */
export function resumeOf(values: Record<string, unknown>, options: Flags): Resume | undefined {
  if (values.restart && values.resume === undefined) throw new UsageError('--restart goes with --resume RUN');
  if (values.resume === undefined) return undefined;
  const m = /^(\d+)(?::(\d+))?$/.exec(String(values.resume).trim());
  if (!m || Number(m[1]) < 1) throw new UsageError(`--resume: expected RUN or RUN:STEP, e.g. 3 or 3:120, got "${String(values.resume)}"`);
  const fixed = Object.keys(options).find((f) => !RESUME_TAKES.has(f) && !Object.hasOwn(OVERRIDE_FLAGS, f) && given(values[f]));
  if (fixed)
    throw new UsageError(
      `--${fixed}: a resumed run keeps it, so that it goes on as the same run; on resume only --epochs, --blr, --lr, --min-lr, --warmup and the checkpoint flags change (for more, start a new run)`,
    );
  return {
    resume: Number(m[1]),
    ...(m[2] !== undefined && { step: nonNegativeInt('resume', m[2]) }),
    restart: values.restart === true,
    overrides: overridesOf(values),
  };
}

const given = (v: unknown) => v !== undefined && v !== false;

/** The schedule flags given, each checked against the setting's schema; --lr and --blr exclude each other. */
function overridesOf(values: Record<string, unknown>): ResumeOverrides {
  if (given(values.lr) && given(values.blr)) throw new UsageError('--lr: give --lr or --blr, not both');
  const out: Record<string, number> = {};
  for (const [flag, field] of Object.entries(OVERRIDE_FLAGS)) {
    const v = values[flag];
    if (typeof v !== 'string') continue;
    const r = ResumeOverridesSchema.shape[field].safeParse(v.trim() === '' ? NaN : Number(v));
    if (!r.success) throw new UsageError(`--${flag}: expected ${EXPECTED[field]}, got "${v}"`);
    out[field] = r.data!;
  }
  return out;
}

/** The cadence flags given (a resume records them in the run's history). */
function cadenceGiven(c: Cadence, values: SessionValues): Resume['cadence'] {
  const out = {
    ...(values['checkpoint-every'] !== undefined && { everySteps: c.everySteps }),
    ...(values['checkpoint-minutes'] !== undefined && { everyMinutes: c.everyMinutes }),
  };
  return Object.keys(out).length ? out : undefined;
}

/** `--engine`, checked: one of the engines, or auto. */
export function engineChoice(value: string | undefined): EngineChoice | undefined {
  if (value !== undefined && ![...ENGINES, 'auto'].includes(value))
    throw new UsageError(`--engine: expected tfjs, torch or auto, got "${value}"`);
  return value as EngineChoice | undefined;
}

/** `--engine`, resolved (see resolveEngine); torch must be there. */
export function engineOf(value: EngineChoice | undefined, previous?: string | null): Engine {
  const engine = resolveEngine(value, detectTorch, previous);
  const torch = engine === 'torch' ? detectTorch() : undefined;
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
    resume?: Resume;
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
  const choice = engineChoice(values.engine);
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
      request = { ...o.resume, datasetId: check?.datasetId, cadence: cadenceGiven(cadence, values) };
    } else {
      const indexed = await indexWithProgress(store, o.data ?? SAMPLE_IMAGES, { ...indexing, quiet: json });
      if (!json) printSummary(indexed);
      const probe = o.probeData === undefined ? undefined : await indexWithProgress(store, o.probeData, { quiet: json });
      if (probe && !json) printSummary(probe);
      request = o.newRun(indexed.datasetId, probe?.datasetId);
    }
    const engine = engineOf(choice, o.resume && store.run(o.resume.resume)?.backend);
    if (engine === 'torch') log(`engine    ${describeTorch(detectTorch())}`);
    const on = engine === 'torch' ? 'torch' : backend.chosen;
    const prepared = prepare(store, home, request, on);
    if (prepared.recipe) log(prepared.recipe);
    if (engine === 'torch') assertTorchCan(prepared.spec);
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
      await runTrainJob(job, { signal: session.signal, onEvent: session.onEvent, warn, info: log });
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
  let probe: Extract<TrainEvent, { type: 'probe' }> | undefined;

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
      const probe = e.probeTop1 === undefined ? '' : `, linear probe top-1 ${pct(e.probeTop1)} %`;
      say(`step ${e.step}: kNN top-1 ${pct(e.top1)} %, top-5 ${pct(e.top5)} %${probe} (${e.seconds.toFixed(1)} s)`);
    } else if (e.type === 'checkpoint') {
      emit({ type: 'checkpoint', path: e.path, step: e.step, epoch: e.epoch, loss: e.loss });
    } else if (e.type === 'skipped') {
      emit(e); // the terminal shows it as a warning
    } else if (e.type === 'finetune') {
      emit(e);
      say(`run ${o.runId}: ${resultLine(e)}`);
    } else if (e.type === 'probe') {
      probe = e; // recorded before the run's end, shown after it: the output ends with the answer
    } else {
      line.done();
      emit({ type: 'end', status: e.status, step: e.step, reason: e.reason });
      say(
        e.status === 'finished'
          ? `run ${o.runId} finished at step ${e.step}`
          : `run ${o.runId} paused at step ${e.step}: ${e.reason ? `${e.reason}; ` : ''}resume with ${o.resume}`,
      );
      if (probe) emit(probe);
      if (probe) say(probeSummary(probe));
    }
  };
  return { onEvent, signal: abort.signal, line, close: () => process.off('SIGINT', onSigint) };
}
