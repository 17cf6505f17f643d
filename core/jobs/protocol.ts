import type { BackendReport } from '../backend.js';
import type { IndexProgress, KnownFile, ScanResult } from '../data/indexer.js';
import type { TrainJob } from '../runs/job.js';
import type { ImageRow } from '../store/store.js';
import type { TrainEvent } from '../train/loop.js';

/** The first message a job process receives: what to do. */
export type JobRequest = { kind: 'index'; root: string; known: KnownFile[] } | TrainJob;

/** Later messages to a running job. */
export type JobControl = { type: 'pause' };

/** What a job reports. Jobs never write the database: the service does, from these. */
export type JobMessage =
  | { type: 'backend'; report: BackendReport }
  | { type: 'progress'; progress: IndexProgress }
  /** An indexing result arrives in pages of rows, then the rest of it: one huge message may not survive the exit. */
  | { type: 'scan-page'; upserts: ImageRow[] }
  | { type: 'scanned'; scan: Omit<ScanResult, 'upserts'>; seconds: number }
  | { type: 'train'; event: TrainEvent }
  | { type: 'preview'; step: number }
  | { type: 'warning'; message: string }
  | { type: 'error'; message: string };

/** Both ends of a job's channel: Node's child-process IPC or Electron's utility-process port. */
export interface JobHandle {
  readonly pid: number | undefined;
  send(msg: JobRequest | JobControl): void;
  onMessage(cb: (msg: JobMessage) => void): void;
  onExit(cb: (code: number | null) => void): void;
  kill(): void;
}

export type Launcher = () => JobHandle;
