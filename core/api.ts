import { z } from 'zod';
import { isAbsolute } from 'node:path';
import { BACKENDS } from './backend.js';
import { describeIssue, MAX_EPOCHS, ResumeOverridesSchema } from './config.js';
import { ENGINES } from './engine.js';
import type { FinetuneResult, KnnRow, MetricRow, RunStatus } from './store/store.js';

// The one API of LocalMIM Studio: the same methods and events over Electron IPC (preload) and over
// HTTP + server-sent events (`localmim serve`). Each method's arguments are validated by its schema on
// the receiving side; results are plain JSON.

const id = z.number().int().positive();
/** Fit a new run to a time on this machine: its schedule, and with `input` its input size (core/runs/budget.ts). */
const budget = z.strictObject({ minutes: z.number().positive().max(1e6), input: z.boolean().default(false) }).optional();
const backend = z.enum(BACKENDS);
/** What `exports.create` and `localmim export --format` write (core/export/export.ts). */
export const EXPORT_FORMATS = ['safetensors', 'tfjs', 'onnx'] as const;
/** What trains the run (core/engine.ts); `amp`: bf16 mixed precision on the torch engine's GPU. */
const embedEngine = { engine: z.enum([...ENGINES, 'auto']).optional() };
const engine = { ...embedEngine, amp: z.boolean().optional() };

/** A folder on the service's machine: absolute, since a relative one would resolve against the service's working folder. */
const folder = z
  .string()
  .min(1)
  .max(4096)
  .refine((p) => isAbsolute(p), { message: 'must be an absolute path (a relative one would resolve against the server’s folder)' });

export const METHODS = {
  'app.info': z.strictObject({}),
  'datasets.list': z.strictObject({}),
  'datasets.add': z.strictObject({ path: folder }),
  'datasets.addSample': z.strictObject({}),
  'datasets.get': z.strictObject({ id }),
  'datasets.thumbnails': z.strictObject({
    id,
    offset: z.number().int().min(0).default(0),
    limit: z.number().int().min(1).max(200).default(48),
  }),
  /** `budget`: the config fitted to a time on this machine (with a dataset: its images set the epoch and input). */
  'config.check': z.strictObject({ config: z.unknown(), datasetId: id.optional(), budget }),
  'runs.list': z.strictObject({}),
  'runs.get': z.strictObject({ id }),
  /**
   * `backend`: pin the run to one compute backend instead of the fastest that loads. `probe`: a labeled dataset the kNN
   * monitor scores the backbone on, every `every` steps (default: within 10 % of the time).
   */
  'runs.create': z.strictObject({
    datasetId: id,
    name: z.string().max(200).optional(),
    config: z.unknown(),
    budget,
    backend: backend.optional(),
    ...engine,
    probe: z.strictObject({ datasetId: id, every: z.number().int().min(1).optional() }).optional(),
  }),
  'runs.pause': z.strictObject({ id }),
  /**
   * `restart`: start over from step 0 when none of the run's checkpoints can be read. `data`: the folder the run's
   * images are in now (they are matched by content); without it, the run's own folder is re-checked. `step`: continue
   * from the checkpoint at that step, not the newest (what came after it is set aside in `superseded-<n>/`). The
   * schedule may change from there (`epochs`, `blr` or `lr`, `minLr`, `warmupEpochs`) and the checkpoint cadence
   * (`checkpointEvery` steps, `checkpointMinutes`); each change is recorded in the run's history (`runs.get`: resumes).
   */
  'runs.resume': z.strictObject({
    id,
    step: z.number().int().min(1).optional(),
    ...ResumeOverridesSchema.shape,
    checkpointEvery: z.number().int().min(1).optional(),
    checkpointMinutes: z.number().positive().optional(),
    restart: z.boolean().default(false),
    backend: backend.optional(),
    data: folder.optional(),
    ...engine,
  }),
  'runs.cancel': z.strictObject({ id }),
  'runs.extend': z.strictObject({ id, epochs: z.number().int().min(1).max(MAX_EPOCHS) }),
  'runs.update': z.strictObject({
    id,
    name: z.string().max(200).optional(),
    notes: z.string().max(20_000).optional(),
    tags: z.array(z.string().max(50)).max(50).optional(),
  }),
  'runs.preview': z.strictObject({ id, step: z.number().int().min(0) }),
  'finetune.create': z.strictObject({
    /** The pretraining run (and checkpoint step; default its newest) to start from; null = from scratch. */
    from: z.strictObject({ runId: id, step: z.number().int().min(0).optional() }).nullable(),
    datasetId: id,
    name: z.string().max(200).optional(),
    /** Fine-tuning settings (core/finetune-config.ts FinetuneConfigSchema); for a scratch run also `model`. */
    finetune: z.unknown(),
    model: z.unknown().optional(),
    seed: z.number().int().min(0).default(0),
    ...engine,
  }),
  'exports.create': z.strictObject({ runId: id, step: z.number().int().min(0).optional(), format: z.enum(EXPORT_FORMATS) }),
  /** A PyTorch DDP job folder (core/scale-out/folder.ts) for a run (from its newest checkpoint, or `step`) or a new run's config. */
  'jobs.scaleOut': z
    .strictObject({ runId: id.optional(), step: z.number().int().min(0).optional(), config: z.unknown().optional(), datasetId: id })
    .refine((a) => (a.runId === undefined) !== (a.config === undefined), { message: 'give either runId or config', path: ['runId'] }),
  'analysis.run': z.strictObject({
    runId: id,
    step: z.number().int().min(0).optional(),
    datasetId: id,
    path: z.string().min(1).max(4096),
    query: z.number().int().min(0),
  }),
  /** NMI, KL and gradient norms per block over `images` of the dataset, chosen by `seed` (all when it has fewer). */
  'analysis.set': z.strictObject({
    runId: id,
    step: z.number().int().min(0).optional(),
    datasetId: id,
    images: z.number().int().min(1).max(4096).default(64),
    seed: z.number().int().min(0).default(0),
  }),
  /**
   * A dataset's embeddings by a run's backbone (its newest checkpoint, or `step`), written once and reused; `engine`:
   * what embeds (default tfjs; auto: torch where it has a GPU), for these and the two below.
   */
  'embeddings.create': z.strictObject({ runId: id, step: z.number().int().min(0).optional(), datasetId: id, ...embedEngine }),
  /** The `k` images of the dataset most cosine-similar to the one at `path`. */
  'embeddings.similar': z.strictObject({
    runId: id,
    step: z.number().int().min(0).optional(),
    datasetId: id,
    path: z.string().min(1).max(4096),
    k: z.number().int().min(1).max(50).default(8),
    ...embedEngine,
  }),
  /** The dataset's embeddings on their first two principal components. */
  'embeddings.map': z.strictObject({ runId: id, step: z.number().int().min(0).optional(), datasetId: id, ...embedEngine }),
} as const;

export type Method = keyof typeof METHODS;
export type Args<M extends Method> = z.input<(typeof METHODS)[M]>;

export const isMethod = (m: unknown): m is Method => typeof m === 'string' && Object.hasOwn(METHODS, m);

/** Validates a call's arguments, turning zod's issues into one message that names each bad field. */
export function parseArgs<M extends Method>(method: M, args: unknown): z.output<(typeof METHODS)[M]> {
  const r = METHODS[method].safeParse(args ?? {});
  if (!r.success) throw new ApiError('bad-request', `${method}: ${r.error.issues.map(describeIssue).join('; ')}`);
  return r.data as z.output<(typeof METHODS)[M]>;
}

export class ApiError extends Error {
  constructor(
    /** `busy`: too many requests wait for a job already (HTTP 429); try again shortly. */
    readonly kind: 'bad-request' | 'not-found' | 'conflict' | 'forbidden' | 'busy',
    message: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

/** Events pushed to every window: training progress, indexing progress, status changes, a long call's progress. */
export type ApiEvent =
  | { type: 'dataset.progress'; datasetPath: string; done: number; total: number; filesPerS: number; etaS: number }
  | { type: 'dataset.indexed'; datasetId: number }
  | { type: 'dataset.error'; datasetPath: string; message: string }
  | { type: 'run.status'; runId: number; status: RunStatus; error: string | null }
  | { type: 'run.metrics'; runId: number; rows: MetricRow[] }
  | { type: 'run.checkpoint'; runId: number; step: number }
  | { type: 'run.eval'; runId: number; step: number; top1: number; loss: number }
  | { type: 'run.knn'; runId: number; row: KnnRow }
  /** A fine-tune's result beside its baselines, once they are computed (after its `end`). */
  | { type: 'run.result'; runId: number; result: FinetuneResult }
  | { type: 'run.preview'; runId: number; step: number }
  /** A call whose job works in steps (analysis.set: images through each pass) has done `done` of `total`. */
  | { type: 'job.progress'; method: Method; runId: number; done: number; total: number }
  /** An image the run could not read was replaced by another (runs.get counts them: run.skippedImages). */
  | { type: 'run.skipped'; runId: number; path: string; reason: string };
