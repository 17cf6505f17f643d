import { call, transport, type ApiEvent, type Result } from './api';

/** App-wide state shared by the screens, refreshed from the API and its events. */
export const app = $state({
  info: null as Result<'app.info'> | null,
  datasets: [] as Result<'datasets.list'>,
  runs: [] as Result<'runs.list'>,
  indexing: {} as Record<string, { done: number; total: number; etaS: number; error?: string }>,
  error: null as string | null,
});

const listeners = new Set<(e: ApiEvent) => void>();

/** Subscribes a screen to API events; returns the unsubscribe function (use it as an effect's teardown). */
export function onEvent(listener: (e: ApiEvent) => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export async function refresh(): Promise<void> {
  try {
    [app.datasets, app.runs] = await Promise.all([call('datasets.list', {}), call('runs.list', {})]);
  } catch (err) {
    app.error = (err as Error).message;
  }
}

export async function start(): Promise<void> {
  transport.subscribe((e) => {
    if (e.type === 'dataset.progress') app.indexing[e.datasetPath] = { done: e.done, total: e.total, etaS: e.etaS };
    if (e.type === 'dataset.error') app.indexing[e.datasetPath] = { done: 0, total: 0, etaS: 0, error: e.message };
    if (e.type === 'dataset.indexed' || e.type === 'run.status' || e.type === 'run.result') void refresh();
    for (const l of listeners) l(e);
  });
  try {
    app.info = await call('app.info', {});
  } catch (err) {
    app.error = (err as Error).message;
  }
  await refresh();
}
