import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { ApiError } from '../api.js';
import { checkAnalyzable } from '../analysis/attention.js';
import { chooseImages } from '../analysis/set.js';
import { modelDims, parseRunConfig, type ModelConfig } from '../config.js';
import { exportInput } from '../export/export.js';
import { checkpointRef } from '../runs/checkpoints.js';
import { specOf } from '../runs/spec.js';
import { planScaleOut } from '../scale-out/folder.js';
import type { RunRow } from '../store/store.js';
import type { Context, Handlers } from './service.js';

/**
 * Attention analysis, export and scale-out. Each checks its request against the database here, so a bad one answers at
 * once, then a job process computes the answer (core/jobs/compute.ts) while the service goes on answering.
 */
export const analysisHandlers = (c: Context) =>
  ({
    'analysis.run': async (a) => {
      const run = c.run(a.runId);
      const d = c.dataset(a.datasetId);
      const row = c.store.images(d.id, 'ok').find((r) => r.path === a.path);
      if (!row) throw new ApiError('not-found', `${a.path} is not an image of dataset ${d.name}`);
      const ref = checkpointRef(c.store, checkpointSpec(run.id, a.step));
      const { model } = specOf(run).config;
      checkAnalyzable(model, run.id, 'the attention screen');
      const { g } = modelDims(model);
      if (a.query >= g * g) throw new ApiError('bad-request', `query: patch ${a.query} is outside the ${g}×${g} grid`);
      // The image path comes from the index, never from the request.
      const r = await c.scheduler.compute({ kind: 'analysis', ref, image: join(d.root, row.path), query: a.query });
      return { runId: run.id, grid: g, query: a.query, taps: tapped(run, model), image: r.image, layers: r.layers };
    },
    'analysis.set': async (a) => {
      const run = c.run(a.runId);
      const d = c.dataset(a.datasetId);
      const all = c.store.images(d.id, 'ok').map((r) => r.path);
      if (!all.length) throw new ApiError('bad-request', `dataset ${d.name} has no usable images`);
      const ref = checkpointRef(c.store, checkpointSpec(run.id, a.step));
      const { model } = specOf(run).config;
      checkAnalyzable(model, run.id, 'the attention screen');
      const paths = chooseImages(all, a.images, a.seed);
      // The image paths come from the index, never from the request.
      const images = paths.map((p) => join(d.root, p));
      const set = await c.scheduler.compute({ kind: 'analysis-set', ref, images, seed: a.seed }, (done, total) =>
        c.emit({ type: 'job.progress', method: 'analysis.set', runId: run.id, done, total }),
      );
      return {
        runId: run.id,
        images: { root: d.root, requested: a.images, used: paths.length, seed: a.seed, paths },
        taps: tapped(run, model),
        ...set,
      };
    },
    'exports.create': async (a) => {
      const run = c.run(a.runId);
      const spec = checkpointSpec(run.id, a.step);
      const input = exportInput(c.store, spec, a.format);
      const r = await c.scheduler.compute({ kind: 'export', input, out: join(c.home, 'exports', `${spec.replace(':', '-')}-${a.format}`) });
      c.store.addExport(run.id, a.format, r.dir);
      return r;
    },
    'jobs.scaleOut': async (a) => {
      const d = c.dataset(a.datasetId);
      const name = a.runId === undefined ? `new-${Date.now()}` : `run-${c.run(a.runId).id}${a.step === undefined ? '' : `-${a.step}`}`;
      // The dataset as indexed: the manifest lists what the app shows.
      const plan = planScaleOut({
        config: a.config === undefined ? undefined : parseRunConfig(a.config),
        source: a.runId === undefined ? null : checkpointRef(c.store, checkpointSpec(a.runId, a.step)),
        dataRoot: d.root,
        rows: c.store.images(d.id, 'ok'),
        out: freshDir(join(c.home, 'jobs', name)),
      });
      const job = await c.scheduler.compute({ kind: 'scale-out', plan });
      return { out: job.out, images: job.images, readme: job.readme };
    },
  }) satisfies Handlers;

const checkpointSpec = (runId: number, step?: number) => (step === undefined ? String(runId) : `${runId}:${step}`);

/** The blocks whose output a pretraining run's decoders read (none for the global variant, nor outside pretraining). */
function tapped(run: RunRow, model: ModelConfig): number[] {
  return model.variant === 'global' || run.kind !== 'pretrain' ? [] : modelDims(model).taps;
}

/** `path`, or `path-2`, `path-3`, … when it is taken. */
function freshDir(path: string): string {
  let out = path;
  for (let i = 2; existsSync(out); i++) out = `${path}-${i}`;
  return out;
}
