import { constants, setPriority } from 'node:os';
import { initBackend } from '../backend.js';
import { ConfigError } from '../config.js';
import { scanFolder } from '../data/indexer.js';
import { UserError } from '../errors.js';
import { runTrainJob } from '../runs/job.js';
import { runCompute } from './compute.js';
import type { JobControl, JobMessage, JobRequest } from './protocol.js';

/** Rows per `scan-page` message. */
const PAGE = 500;

/** Runs one job in this (separate) process, reporting through `post`; `signal` pauses a training job. */
export async function runJob(req: JobRequest, post: (m: JobMessage) => void, signal: AbortSignal): Promise<void> {
  if (req.kind === 'index') {
    const t0 = performance.now();
    const { upserts, ...scan } = await scanFolder(req.root, req.known, { onProgress: (progress) => post({ type: 'progress', progress }) });
    for (let i = 0; i < upserts.length; i += PAGE) post({ type: 'scan-page', upserts: upserts.slice(i, i + PAGE) });
    post({ type: 'scanned', scan, seconds: (performance.now() - t0) / 1000 });
    return;
  }
  if (req.kind !== 'train') {
    const result = await runCompute(req, (done, total) => post({ type: 'steps', done, total }));
    return post({ type: 'result', result });
  }
  // The torch engine's device is reported by its start event; tfjs still builds its initial weights and previews.
  const torch = req.engine === 'torch';
  const report = await initBackend(torch ? undefined : req.backend);
  if (!torch) post({ type: 'backend', report });
  await runTrainJob(
    { ...req, backend: torch ? req.backend : report.chosen },
    {
      signal,
      onEvent: (event) => post({ type: 'train', event }),
      onPreview: (step) => post({ type: 'preview', step }),
      warn: (message) => post({ type: 'warning', message }),
    },
  );
}

/**
 * Entry point of a job process (a Node child of the service, with an IPC channel). Every message is delivered
 * before the process exits; when the service goes away, a training job checkpoints and stops.
 */
export function serveJob(): void {
  // Below the service and the window: with every core training, they still answer at once.
  setPriority(constants.priority.PRIORITY_BELOW_NORMAL);
  const pending = new Set<Promise<void>>();
  const post = (m: JobMessage) => {
    if (!process.connected) return; // the service is gone: nobody to tell
    const sent = new Promise<void>((resolve) => process.send!(m, undefined, {}, () => resolve()));
    pending.add(sent);
    void sent.then(() => pending.delete(sent));
  };
  const abort = new AbortController();
  process.on('disconnect', () => abort.abort());
  let started = false;
  process.on('message', (msg: JobRequest | JobControl) => {
    if (started) return void ('type' in msg && msg.type === 'pause' && abort.abort());
    started = true;
    runJob(msg as JobRequest, post, abort.signal)
      .catch((err: Error) => post({ type: 'error', message: err.message, kind: kindOf(err) }))
      .then(() => Promise.all(pending))
      .finally(() => process.exit(0));
  });
}

/** The API error a job's failure maps to, as the service maps its own: only the user's mistakes have one. */
function kindOf(err: Error): UserError['kind'] | undefined {
  if (err instanceof UserError) return err.kind;
  return err instanceof ConfigError ? 'bad-request' : undefined;
}
