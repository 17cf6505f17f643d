import type { BackendReport } from '../backend.js';
import type { FinetuneRun, RunConfig } from '../config.js';
import type { IndexProgress, KnownFile, ScanResult } from '../data/indexer.js';
import type { DataItem } from '../data/loader.js';
import type { TrainEvent } from '../train/loop.js';

/** The first message a job process receives: what to do. */
export type JobRequest =
  | { kind: 'index'; root: string; known: KnownFile[] }
  | {
      kind: 'pretrain';
      runId: number;
      home: string;
      config: RunConfig;
      items: DataItem[];
      resumeFrom?: string;
      backend?: string;
      checkpointEveryMinutes: number;
      previewEvery: number;
    }
  | {
      kind: 'finetune';
      runId: number;
      home: string;
      config: FinetuneRun;
      train: (DataItem & { label: number })[];
      val: (DataItem & { label: number })[];
      /** The pretraining checkpoint whose backbone it starts from. */
      initFrom?: string;
      resumeFrom?: string;
      backend?: string;
    };

/** Later messages to a running job. */
export type JobControl = { type: 'pause' };

/** What a job reports. Jobs never write the database: the service does, from these. */
export type JobMessage =
  | { type: 'backend'; report: BackendReport }
  | { type: 'progress'; progress: IndexProgress }
  | { type: 'scanned'; scan: ScanResult; seconds: number }
  | { type: 'train'; event: TrainEvent }
  | { type: 'preview'; step: number }
  | { type: 'error'; message: string };

/** Both ends of a job's channel: Node's child-process IPC or Electron's utility-process port. */
export interface JobHandle {
  send(msg: JobRequest | JobControl): void;
  onMessage(cb: (msg: JobMessage) => void): void;
  onExit(cb: (code: number | null) => void): void;
  kill(): void;
}

export type Launcher = () => JobHandle;
