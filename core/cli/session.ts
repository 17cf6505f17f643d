import type { BackendReport } from '../backend.js';
import { RunRecorder } from '../service/recorder.js';
import type { Store } from '../store/store.js';
import type { TrainEvent } from '../train/loop.js';
import { duration, StatusLine } from './progress.js';

/**
 * A training run in the terminal: records its events in the store, prints them (a progress line, or one
 * JSON object per line with --json), and turns the first Ctrl-C into "checkpoint and stop".
 */
export function terminalSession(o: {
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
        backend: o.backend.chosen,
        backendReport: o.backend,
        config: e.config,
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
    } else if (e.type === 'checkpoint') {
      emit({ type: 'checkpoint', path: e.path, step: e.step, epoch: e.epoch, loss: e.loss });
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
