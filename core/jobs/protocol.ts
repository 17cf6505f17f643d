import type { BackendReport } from '../backend.js';
import type { IndexProgress, KnownFile, ScanResult } from '../data/indexer.js';
import type { UserError } from '../errors.js';
import type { Engine } from '../engine.js';
import type { EmbedItem } from '../analysis/embed.js';
import type { ExportInput } from '../export/export.js';
import type { CheckpointRef } from '../runs/checkpoints.js';
import type { TrainJob } from '../runs/train-job.js';
import type { ScalePlan } from '../scale-out/folder.js';
import type { ImageRow } from '../store/store.js';
import type { TrainEvent } from '../train/loop.js';

/**
 * Work that answers one API call: the service checks the request against the database, then a job computes the answer
 * (core/jobs/compute.ts), so that no computation holds up the service.
 */
export type ComputeRequest =
  /** This machine's backend, as a training job would choose it. */
  | { kind: 'backend' }
  /** Attention maps of one image; `image` is a path from the index. */
  | { kind: 'analysis'; ref: CheckpointRef; image: string; query: number }
  | { kind: 'analysis-set'; ref: CheckpointRef; images: string[]; seed: number }
  | { kind: 'export'; input: ExportInput; out: string }
  | { kind: 'scale-out'; plan: ScalePlan }
  /** A dataset's embeddings (written once, then reused); with `similar`, one image's neighbours, with `map`, a 2-D PCA map. */
  | ({ kind: 'embed' } & EmbedRequest);

/** The dataset's images as indexed, and the file their embeddings go to. */
export interface EmbedRequest {
  ref: CheckpointRef;
  items: EmbedItem[];
  out: string;
  similar?: { path: string; k: number };
  map?: boolean;
  engine: Engine;
}

/** The first message a job process receives: what to do. */
export type JobRequest = { kind: 'index'; root: string; known: KnownFile[] } | TrainJob | ComputeRequest;

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
  /** A compute job's progress through its steps, and its answer. */
  | { type: 'steps'; done: number; total: number }
  | { type: 'result'; result: unknown }
  | { type: 'warning'; message: string }
  /** `kind` is set when it is the user's mistake (a UserError), which the API reports as such. */
  | { type: 'error'; message: string; kind?: UserError['kind'] };

/** Both ends of a job's channel: Node's child-process IPC or Electron's utility-process port. */
export interface JobHandle {
  readonly pid: number | undefined;
  send(msg: JobRequest | JobControl): void;
  onMessage(cb: (msg: JobMessage) => void): void;
  onExit(cb: (code: number | null) => void): void;
  kill(): void;
}

export type Launcher = () => JobHandle;
