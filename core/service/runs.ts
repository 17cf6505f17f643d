import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ApiError } from '../api.js';
import { describeIssue, MODEL_SIZES, parseRunConfig, RunConfigSchema, SWIN_SIZES } from '../config.js';
import { NEW_RUN, newRunConfig, presetStarts } from '../presets.js';
import { FinetuneConfigSchema } from '../finetune-config.js';
import { torchProblem } from '../engine.js';
import { homePaths } from '../home.js';
import { DEFAULT_MINUTES, fitToBudget } from '../runs/budget.js';
import { estimate } from '../runs/estimate.js';
import { shortSides } from '../store/store.js';
import { memoryProblem } from '../runs/lifecycle.js';
import { optimOf, specOf } from '../runs/spec.js';
import { recheckDataset } from '../runs/recheck.js';
import { runCheckpoints } from '../runs/reconcile.js';
import type { Context, Handlers } from './context.js';

/** The new-run screen's defaults and checks, and the runs: start, pause, resume, cancel, extend, edit, show. */
export const runHandlers = (c: Context) =>
  ({
    'app.info': async () => ({
      backend: (await c.scheduler.backend()).report,
      /** The torch engine, as the new-run form offers it (greyed out with `reason` where it cannot run). */
      torch: (await c.scheduler.backend()).torch,
      home: c.home,
      sizes: MODEL_SIZES,
      swinSizes: SWIN_SIZES,
      /** Each size's starting config under each preset, and the preset's name: the one layering (core/presets.ts). */
      starts: Object.fromEntries([...Object.keys(MODEL_SIZES), ...Object.keys(SWIN_SIZES)].map((size) => [size, presetStarts(size)])),
      defaults: newRunConfig(),
      defaultPreset: NEW_RUN.preset,
      /** A new run's time budget (core/runs/budget.ts): the form fits the schedule to it unless told otherwise. */
      budgetMinutes: DEFAULT_MINUTES,
      /** A fine-tune's and a linear probe's defaults where no recipe chooses them (core/finetune-config.ts). */
      finetune: FinetuneConfigSchema.parse({}),
      probe: FinetuneConfigSchema.parse({ linearProbe: true }),
    }),
    'config.check': async (a) => {
      const r = RunConfigSchema.safeParse(a.config ?? {});
      if (!r.success)
        return {
          ok: false,
          errors: r.error.issues.map((i) => ({
            path: i.path.join('.'),
            message: i.code === 'unrecognized_keys' ? describeIssue(i) : i.message,
          })),
        };
      const images = a.datasetId ? c.store.images(a.datasetId, 'ok') : [];
      const { report, computePath } = await c.scheduler.backend();
      // With a budget, what runs is the fitted config: its estimate and memory are the ones to show.
      const fitted = a.budget ? fitToBudget(r.data, shortSides(images), computePath, a.budget) : null;
      const config = fitted?.config ?? r.data;
      const e = estimate(config, images.length, computePath);
      const problem = memoryProblem(config, report.chosen, report.adapter ?? null);
      // Why the torch engine cannot train it, if it cannot: the new-run form greys the engine out with this.
      const torch = torchProblem({ kind: 'pretrain', model: config.model }) ?? null;
      const errors = problem ? [{ path: 'model', message: problem }] : [];
      return { ok: !problem, errors, config, estimate: e, fitted: fitted && { why: fitted.why }, torch };
    },
    'runs.list': () => {
      const last = c.store.lastMetrics();
      return c.store.runs().map((r) => ({ ...r, error: c.scheduler.problem(r.id) ?? r.error, last: last.get(r.id) ?? null }));
    },
    'runs.get': (a) => {
      const run = c.run(a.id);
      return {
        run: { ...run, error: c.scheduler.problem(run.id) ?? run.error },
        metrics: c.store.metrics(run.id),
        knn: c.store.knn(run.id),
        checkpoints: runCheckpoints(c.store, run.id, homePaths(c.home).run(run.id)),
        resumes: c.store.resumes(run.id),
        /** The checkpoint export uses by default: the best validated one (fine-tuning), if any. */
        best: c.store.bestCheckpoint(run.id)?.id ?? null,
        exports: c.store.exports(run.id),
        previews: previews(c.home, run.id),
        active: c.scheduler.isActive(run.id),
      };
    },
    'runs.create': async (a) => {
      // The config is parsed here, once: everything after it passes the typed value on.
      const config = parseRunConfig(a.config ?? {});
      const req = { new: 'pretrain', datasetId: a.datasetId, config, name: a.name, probe: a.probe, budget: a.budget } as const;
      return { runId: await c.scheduler.start(req, a.backend, a) };
    },
    'runs.pause': (a) => {
      c.scheduler.pause(c.run(a.id).id);
      return { ok: true };
    },
    'runs.resume': async (a) => {
      c.scheduler.assertIdle(c.run(a.id).id);
      if (a.blr !== undefined && a.lr !== undefined) throw new ApiError('bad-request', 'runs.resume: lr: give lr or blr, not both');
      const check = await recheckDataset(c.store, a.id, a.data, (root) => c.scheduler.index(root));
      const { id, step, restart, epochs, blr, lr, minLr, warmupEpochs, checkpointEvery, checkpointMinutes } = a;
      const cadence = {
        ...(checkpointEvery !== undefined && { everySteps: checkpointEvery }),
        ...(checkpointMinutes !== undefined && { everyMinutes: checkpointMinutes }),
      };
      const overrides = { epochs, blr, lr, minLr, warmupEpochs };
      const req = { resume: id, step, restart, datasetId: check?.datasetId, overrides, cadence };
      await c.scheduler.start(req, a.backend, a);
      return { ok: true, dataset: check?.line ?? null };
    },
    'runs.cancel': (a) => {
      c.scheduler.cancel(c.run(a.id).id);
      return { ok: true };
    },
    'runs.extend': async (a) => {
      c.scheduler.assertIdle(c.run(a.id).id);
      await c.scheduler.start({ extend: a.id, epochs: a.epochs });
      return { ok: true, epochs: optimOf(specOf(c.run(a.id))).epochs };
    },
    'runs.update': (a) => {
      c.run(a.id);
      c.store.updateRun(a.id, {
        ...(a.name !== undefined && { name: a.name }),
        ...(a.notes !== undefined && { notes: a.notes }),
        ...(a.tags && { tags: a.tags }),
      });
      return c.store.run(a.id);
    },
    'runs.preview': (a) => {
      const dir = join(homePaths(c.home).run(c.run(a.id).id), 'previews', String(a.step));
      if (!existsSync(join(dir, 'preview.json'))) throw new ApiError('not-found', `run ${a.id} has no preview at step ${a.step}`);
      const meta = JSON.parse(readFileSync(join(dir, 'preview.json'), 'utf8')) as { step: number; probes: number; cells: number[] };
      const url = (f: string) => `data:image/png;base64,${readFileSync(join(dir, f)).toString('base64')}`;
      return {
        step: meta.step,
        cells: meta.cells,
        probes: Array.from({ length: meta.probes }, (_, b) => ({
          input: url(`${b}-input.png`),
          masked: url(`${b}-masked.png`),
          scales: meta.cells.map((cell, k) => ({ cell, target: url(`${b}-${k}-target.png`), pred: url(`${b}-${k}-pred.png`) })),
        })),
      };
    },
    'finetune.create': async (a) => {
      const model = a.from ? undefined : parseRunConfig({ model: a.model }).model;
      const req = {
        new: 'finetune' as const,
        datasetId: a.datasetId,
        from: a.from,
        model,
        finetune: a.finetune,
        seed: a.seed,
        name: a.name,
      };
      return { runId: await c.scheduler.start(req, undefined, a) };
    },
  }) satisfies Handlers;

/** The steps a run has reconstruction previews for. */
function previews(home: string, runId: number): number[] {
  const dir = join(homePaths(home).run(runId), 'previews');
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((n) => existsSync(join(dir, n, 'preview.json')))
    .map(Number)
    .sort((a, b) => a - b);
}
