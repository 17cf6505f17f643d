import { totalmem } from 'node:os';
import { join } from 'node:path';
import {
  ConfigError,
  FinetuneConfigSchema,
  FinetuneRunSchema,
  parseConfig,
  modelFamily,
  parseRunConfig,
  RunConfigSchema,
  type ModelConfig,
  type ResumeOverrides,
  type RunConfig,
} from '../config.js';
import { labeledSplit } from '../data/labels.js';
import { UserError } from '../errors.js';
import { activeAdapter, computePath } from '../backend.js';
import type { Adapter } from '../webgpu.js';
import { homePaths, isAlive } from '../home.js';
import { finetuneDefaults, RECIPE_CHOICES, type RecipeChoice, type RecipeModel } from '../recipe.js';
import { shortSides, type RunProbe, type RunRow, type Store } from '../store/store.js';
import { checkpointFor, resumePoint, type FoundCheckpoint, type ResumePoint } from './checkpoints.js';
import { estimate } from './estimate.js';
import { recordFromFiles } from './reconcile.js';
import { fitToBudget, type Budget } from './budget.js';
import { probeSetOf } from './probe.js';
import type { TrainJob } from './job.js';
import type { Cadence } from '../train/loop.js';
import { changesOf, optimOf, specOf, withOverrides } from './spec.js';
import { supersede } from './supersede.js';

/** What can be asked of the run lifecycle. */
export type RunRequest =
  | {
      new: 'pretrain';
      datasetId: number;
      config: RunConfig;
      name?: string;
      /** `RUN[:STEP]` whose backbone it starts from. */ init?: string;
      /** A labeled dataset the kNN monitor scores the backbone on. */ probe?: RunProbe;
      /** Fit the schedule (and, asked, the input size) to a time on this machine (core/runs/budget.ts). */
      budget?: Budget;
    }
  | {
      new: 'finetune';
      datasetId: number;
      /** `RUN[:STEP]` to start from; null = from scratch, with `model`. */
      from: string | null;
      model?: ModelConfig;
      finetune: unknown;
      seed: number;
      name?: string;
    }
  | {
      resume: number;
      /** Continue from the checkpoint at this step rather than the newest; the later ones are set aside (supersede). */
      step?: number;
      /** Start over from step 0 when no checkpoint is intact. */ restart?: boolean;
      /** The dataset its images are in now (recheckDataset), when not its own. */ datasetId?: number;
      /** Schedule settings to change from here on. */ overrides?: ResumeOverrides;
      /** Checkpoint cadence asked for this time (recorded in the run's history; the caller's job uses it). */ cadence?: Cadence;
    }
  | { extend: number; epochs: number };

type TrainSpec = TrainJob['spec'];

/** A validated request: what `begin` will write, and the job it will hand out. Nothing has been changed yet. */
export interface Prepared {
  /** The run to create, or the existing one to continue (on another dataset when its images moved). */
  run: { create: { name: string; datasetId: number; parentId: number | null; probe?: RunProbe } } | { id: number; datasetId?: number };
  spec: TrainSpec;
  /** Set when the stored config changes (extend, resume with overrides). */
  specChanged: boolean;
  resume?: ResumePoint;
  /** What the run's resume history records: the settings changed, and whether later checkpoints are set aside. */
  history?: { changes: Record<string, [unknown, unknown]>; supersede: boolean };
  /** A new fine-tune: which recipe runs and why (core/recipe.ts finetuneDefaults); a budgeted pretraining: its schedule. */
  recipe?: string;
  job: Omit<TrainJob, 'runId' | 'cadence' | 'backend' | 'stopAtStep' | 'previewEvery'>;
}

/**
 * Validates a request completely — config, dataset, checkpoints, ownership, memory — before any side effect:
 * it writes nothing and starts nothing. Errors are {@link UserError}s naming the field or run. `adapter`: the WebGPU
 * adapter `backend` runs on, if any; by default this process's (the service, which loads no backend, passes its probe's).
 */
export function prepare(
  store: Store,
  home: string,
  req: RunRequest,
  backend: string,
  adapter: Adapter | null = activeAdapter() ?? null,
): Prepared {
  const on = { backend, adapter };
  if ('new' in req) return req.new === 'pretrain' ? preparePretrain(store, home, req, on) : prepareFinetune(store, home, req, on);
  const run = store.run('resume' in req ? req.resume : req.extend);
  if (!run) throw new UserError(`no run ${'resume' in req ? req.resume : req.extend}`, 'not-found');
  assertNotOwned(run);
  const before = trainSpec(run);
  const resumed = 'resume' in req ? req : undefined;
  const moved = resumed?.datasetId;
  const datasetId = moved ?? run.datasetId;
  const dataset = datasetId === null ? undefined : store.datasetById(datasetId);
  if (!dataset) throw new UserError(`run ${run.id}: its dataset is no longer recorded`, 'conflict');
  const resume = resumePoint(store, run.id, homePaths(home).run(run.id), resumed?.step);
  if (!resume.checkpoint && resume.broken.length && !resumed?.restart)
    throw new UserError(
      `run ${run.id}: none of its ${resume.broken.length} checkpoint(s) can be read (${resume.broken[0]}${resume.broken.length > 1 ? ', …' : ''}); nothing was changed. Restart it from step 0 with --restart (in the app: "Restart from step 0")`,
      'conflict',
    );
  const spec = changedSpec(run.id, before, 'extend' in req ? { epochs: optimOf(before).epochs + req.epochs } : resumed?.overrides, resume);
  const changes = changesOf(before, spec);
  const cadence = Object.entries(resumed?.cadence ?? {}).map(([k, v]): [string, [unknown, unknown]] => [k, [null, v]]);
  checkMemory(spec, on);
  const data = dataFor(store, spec, dataset);
  const initFrom = !resume.checkpoint ? initPath(store, spec) : undefined;
  const probe = run.probe && spec.kind === 'pretrain' ? probeSetOf(store, run.probe, spec.config.seed) : undefined;
  return {
    run: { id: run.id, datasetId: moved },
    spec,
    specChanged: Object.keys(changes).length > 0,
    resume,
    history: { changes: { ...changes, ...Object.fromEntries(cadence) }, supersede: resumed?.step !== undefined },
    job: { kind: 'train', home, spec, data, resumeFrom: resume.path, initFrom, probe },
  };
}

/** The run's spec with its schedule changed; more epochs than it has done, since fewer would end it at once. */
function changedSpec(runId: number, spec: TrainSpec, o: ResumeOverrides | undefined, from: ResumePoint): TrainSpec {
  if (!o) return spec;
  const at = from.checkpoint?.state;
  if (at && o.epochs !== undefined && o.epochs <= at.epoch)
    throw new UserError(
      `epochs: run ${runId} continues from epoch ${Number(at.epoch.toFixed(2))} (step ${at.step}); give more epochs than that`,
    );
  try {
    return withOverrides(spec, o, `run ${runId}`);
  } catch (err) {
    if (err instanceof ConfigError) throw new UserError(err.message);
    throw err;
  }
}

function preparePretrain(store: Store, home: string, req: Extract<RunRequest, { new: 'pretrain' }>, on: Target): Prepared {
  const dataset = datasetOf(store, req.datasetId);
  let config = req.config;
  let initFrom: string | undefined;
  if (req.init) {
    // Continue from an earlier or imported backbone: its shape wins; decoders start fresh.
    const source = checkpointFor(store, req.init);
    const b = specOf(source.run).config.model;
    const shape = {
      size: b.size,
      D: b.D,
      depth: b.depth,
      heads: b.heads,
      depths: b.depths,
      stageHeads: b.stageHeads,
      windowSize: b.windowSize,
      patchSize: b.patchSize,
      imgSize: b.imgSize,
      mlpRatio: b.mlpRatio,
    };
    config = parseConfig(RunConfigSchema, { ...config, model: { ...config.model, ...shape } }, `--init ${req.init}`);
    initFrom = source.path;
  }
  const fitted = req.budget && fitToBudget(config, shortSides(store.images(dataset.id, 'ok')), computePath(on.backend), req.budget);
  if (fitted) config = fitted.config;
  const spec: TrainSpec = { kind: 'pretrain', config };
  checkMemory(spec, on);
  const data = dataFor(store, spec, dataset);
  const probe = req.probe && probeSetOf(store, req.probe, config.seed);
  const { size, variant, target } = config.model;
  return {
    run: { create: { name: req.name || `${size} ${variant} ${target}`, datasetId: dataset.id, parentId: null, probe: req.probe } },
    spec,
    specChanged: false,
    recipe: fitted && `schedule  ${fitted.why}`,
    job: { kind: 'train', home, spec, data, initFrom, probe },
  };
}

function prepareFinetune(store: Store, home: string, req: Extract<RunRequest, { new: 'finetune' }>, on: Target): Prepared {
  const dataset = datasetOf(store, req.datasetId);
  const source = req.from === null ? undefined : checkpointFor(store, req.from);
  if (source && source.run.kind === 'finetune')
    throw new UserError(`--from: run ${source.run.id} is a fine-tuning run; start from a pretraining or imported run`);
  const model = source ? specOf(source.run).config.model : req.model;
  if (!model) throw new UserError('model: a fine-tune from scratch needs a model config');
  const given = req.finetune ?? {};
  const { recipe: choice, ...settings } = isRecord(given) ? given : { recipe: undefined };
  const first = parseConfig(FinetuneConfigSchema, isRecord(given) ? settings : given, 'finetune');
  if (first.linearProbe && modelFamily(model) === 'swin')
    throw new UserError(`linearProbe: a linear probe is MAE's protocol for ViTs; the official Swin code has none (${model.size})`);
  const split = splitOf(store, dataset, first.valFraction, req.seed);
  const recipe = first.linearProbe ? undefined : withRecipe(settings, recipeChoice(choice), source, model, split.train.length);
  const finetune = recipe ? parseConfig(FinetuneConfigSchema, recipe.settings, 'finetune') : first;
  const config = parseConfig(FinetuneRunSchema, {
    model,
    finetune,
    seed: req.seed,
    classes: split.classes,
    from: source ? { runId: source.run.id, step: source.step } : null,
  });
  const spec: TrainSpec = { kind: 'finetune', config };
  checkMemory(spec, on);
  const kind = finetune.linearProbe ? 'linear probe' : 'fine-tune';
  return {
    run: {
      create: {
        name: req.name || `${kind} of ${source ? `run ${source.run.id}` : 'scratch'} on ${dataset.name}`,
        datasetId: dataset.id,
        parentId: source?.run.id ?? null,
      },
    },
    spec,
    specChanged: false,
    recipe: recipe?.why,
    job: { kind: 'train', home, spec, data: dataFor(store, spec, dataset, split), initFrom: source?.path },
  };
}

/**
 * Fine-tuning settings over the recipe for `labeled` training images and the source's pretraining length
 * (core/recipe.ts finetuneDefaults): given values win. A linear probe has its own recipe (LINEAR_PROBE).
 */
function withRecipe(
  given: Record<string, unknown>,
  choice: RecipeChoice,
  source: FoundCheckpoint | undefined,
  model: RecipeModel,
  labeled: number,
) {
  const epochs = !source ? null : source.run.kind === 'import' ? 'imported' : source.checkpoint.state.epoch;
  const batch = typeof given.batch === 'number' ? given.batch : undefined;
  const { defaults, why } = finetuneDefaults(labeled, choice, epochs, model, batch);
  return { settings: { ...defaults, ...given }, why };
}

function recipeChoice(v: unknown): RecipeChoice {
  if (v === undefined) return 'auto';
  if (!RECIPE_CHOICES.includes(v as RecipeChoice))
    throw new UserError(`finetune.recipe: expected ${RECIPE_CHOICES.join(', ')}, got ${JSON.stringify(v)}`);
  return v as RecipeChoice;
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function trainSpec(run: RunRow): TrainSpec {
  try {
    const spec = specOf(run);
    if (spec.kind === 'import')
      throw new UserError(`run ${run.id} holds imported weights: fine-tune it, or pretrain from it with --init`, 'conflict');
    return spec;
  } catch (err) {
    if (err instanceof ConfigError) throw new UserError(err.message, 'conflict');
    throw err;
  }
}

function datasetOf(store: Store, id: number) {
  const d = store.datasetById(id);
  if (!d) throw new UserError(`no dataset ${id}`, 'not-found');
  return d;
}

function splitOf(store: Store, dataset: { id: number; name: string }, valFraction: number, seed: number) {
  try {
    return labeledSplit(store.images(dataset.id), valFraction, seed, dataset.name);
  } catch (err) {
    throw new UserError((err as Error).message);
  }
}

/** The job's images: every usable one for pretraining, the seeded labeled split for fine-tuning (made here unless given). */
function dataFor(
  store: Store,
  spec: TrainSpec,
  dataset: { id: number; root: string; name: string },
  given?: ReturnType<typeof splitOf>,
): TrainJob['data'] {
  const abs = (path: string) => join(dataset.root, path);
  if (spec.kind === 'pretrain') {
    const items = store.images(dataset.id, 'ok').map((r) => ({ abs: abs(r.path), hash: r.hash! }));
    const need = spec.config.optim.batch * spec.config.optim.accumIter;
    if (items.length < need)
      throw new UserError(`optim.batch: ${dataset.name} has ${items.length} usable images, fewer than one step of ${need}`);
    return { items };
  }
  const { finetune: f, seed, classes } = spec.config;
  const split = given ?? splitOf(store, dataset, f.valFraction, seed);
  if (split.classes.join('\n') !== classes.join('\n'))
    throw new UserError(`data: the classes of ${dataset.root} changed since the run started (${split.classes.join(', ')})`, 'conflict');
  if (split.train.length < f.batch * f.accumIter)
    throw new UserError(`finetune.batch: ${split.train.length} training images, fewer than one step of ${f.batch * f.accumIter}`);
  const item = (t: { path: string; hash: string; label: number }) => ({ abs: abs(t.path), hash: t.hash, label: t.label });
  return { train: split.train.map(item), val: split.val.map(item) };
}

/** A fine-tune that has no checkpoint of its own yet starts from its source's weights. */
function initPath(store: Store, spec: TrainSpec): string | undefined {
  if (spec.kind !== 'finetune' || !spec.config.from) return undefined;
  const { runId, step } = spec.config.from;
  return checkpointFor(store, `${runId}:${step}`).path;
}

/** A live process owns the run: never take it over. */
export function assertNotOwned(run: RunRow): void {
  if ((run.status === 'running' || run.status === 'queued') && run.pid !== null && run.pid !== process.pid && isAlive(run.pid))
    throw new UserError(`run ${run.id} is ${run.status} in process ${run.pid}: pause it there first`, 'conflict');
}

/** The backend a run is checked against, and its WebGPU adapter where it runs on one (whose limits bound a buffer). */
interface Target {
  backend: string;
  adapter: Adapter | null;
}

/** The run's estimated memory must fit what this backend can address on this machine. */
function checkMemory(spec: TrainSpec, { backend, adapter }: Target): void {
  // The estimate is a pretraining run's: a fine-tune's model at its batch.
  const config =
    spec.kind === 'pretrain' ? spec.config : parseRunConfig({ model: spec.config.model, optim: { batch: spec.config.finetune.batch } });
  const problem = memoryProblem(config, backend, adapter);
  if (problem) throw new UserError(`model: ${problem}`);
}

/** Why a run of this config would not fit this backend's memory (or its GPU's largest buffer), if it would not. */
export function memoryProblem(config: RunConfig, backend: string, adapter: Adapter | null = activeAdapter() ?? null): string | undefined {
  const need = estimate(config, 0, backend);
  if (backend === 'webgpu' && adapter && need.largestBufferMB * 1e6 > adapter.maxStorageBufferBindingSize)
    return `one attention map of this run takes about ${need.largestBufferMB} MB, more than this GPU binds at once (${Math.floor(adapter.maxStorageBufferBindingSize / 1e6)} MB): lower the image size or batch`;
  const { limitMB, what } = memoryBudget(backend);
  if (need.memoryMB > limitMB)
    return `this run needs about ${(need.memoryMB / 1000).toFixed(1)} GB (estimated for imgSize ${config.model.imgSize}, batch ${config.optim.batch}), more than ${what} (${(limitMB / 1000).toFixed(1)} GB): lower the image size, batch or model size`;
  return undefined;
}

/** In MB, as the estimate: wasm32 addresses at most 4 GiB; other backends get most of the machine's memory. */
function memoryBudget(backend: string): { limitMB: number; what: string } {
  if (backend === 'wasm') return { limitMB: Math.floor(2 ** 32 / 1e6), what: 'the wasm backend can address' };
  return { limitMB: Math.floor((0.9 * totalmem()) / 1e6), what: "this machine's memory" };
}

export interface Owner {
  /** The process that trains the run (or, while queued, the service that will start it). */
  pid: number;
  status: 'running' | 'queued';
  backend: string;
}

/**
 * Carries out a prepared request in one immediate transaction: claims the run for `owner` (refusing if a live
 * process holds it meanwhile), creates or updates its row, records the resume in the run's history, sets aside what
 * came after an older checkpoint it was asked to continue from, forgets the metrics after the step it continues from,
 * and records what the store lacks up to there from the run's files (recordFromFiles). Returns the job to run.
 */
export function begin(store: Store, p: Prepared, owner: Owner): Omit<TrainJob, 'cadence' | 'stopAtStep' | 'previewEvery'> {
  const runId = store.db
    .transaction(() => {
      const fields = { status: owner.status, pid: owner.pid, backend: owner.backend, error: null };
      if ('create' in p.run) {
        const { name, datasetId, parentId, probe } = p.run.create;
        return store.createRun({ name, datasetId, config: p.spec.config, kind: p.spec.kind, parentId, probe, ...fields }).id;
      }
      const run = store.run(p.run.id)!;
      assertNotOwned(run);
      store.updateRun(run.id, {
        ...fields,
        ...(p.specChanged && { config: p.spec.config }),
        ...(p.run.datasetId && { datasetId: p.run.datasetId }),
      });
      const from = p.resume?.checkpoint;
      const step = from?.state.step ?? 0;
      if (p.history) record(store, run.id, step, p);
      store.truncateMetrics(run.id, step);
      recordFromFiles(store, run.id, homePaths(p.job.home).run(run.id), from && { path: p.resume!.path!, loaded: from });
      return run.id;
    })
    .immediate();
  return { ...p.job, runId, backend: owner.backend };
}

/** The resume in the run's history; from an asked-for step, what came after it moves to `superseded-<id>/`. */
function record(store: Store, runId: number, step: number, p: Prepared): void {
  const id = store.addResume(runId, { fromStep: step, changes: p.history!.changes, superseded: [] });
  if (!p.history!.supersede) return;
  const folder = join(homePaths(p.job.home).run(runId), `superseded-${id}`);
  const steps = supersede(store, runId, homePaths(p.job.home).run(runId), step, p.resume?.later ?? [], folder);
  if (steps) store.setSuperseded(id, steps, folder);
}
