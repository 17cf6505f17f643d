import type { ApiEvent, Method, parseArgs } from '../api.js';
import type { DatasetRow, RunRow, Store } from '../store/store.js';
import type { Scheduler } from './scheduler.js';

/** What each area's handlers (datasets.ts, runs.ts, analysis.ts) build on. */
export interface Context {
  readonly home: string;
  readonly store: Store;
  readonly scheduler: Scheduler;
  emit(e: ApiEvent): void;
  /** The run or dataset by id; `not-found` if there is none. */
  run(id: number): RunRow;
  dataset(id: number): DatasetRow;
}

/** Handlers of some of the API's methods, each taking its method's parsed arguments. */
export type Handlers = Partial<{ [M in Method]: (a: ReturnType<typeof parseArgs<M>>) => unknown }>;
