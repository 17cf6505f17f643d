import { join } from 'node:path';
import { ApiError } from '../api.js';
import { resolveEngine, type Engine, type EngineChoice } from '../engine.js';
import { thumbnail } from '../data/decode.js';
import { checkpointRef } from '../runs/checkpoints.js';
import type { Context, Handlers } from './context.js';

/**
 * A dataset's embeddings by a run's backbone: written once per checkpoint and dataset under `<home>/embeddings` (a rerun
 * reuses them), then one image's nearest neighbours or a 2-D map. Checked here; a job process computes.
 */
export const embeddingHandlers = (c: Context) => {
  const request = async (a: { runId: number; step?: number; datasetId: number; engine?: EngineChoice }) => {
    const run = c.run(a.runId);
    const d = c.dataset(a.datasetId);
    const ref = checkpointRef(c.store, { runId: run.id, step: a.step });
    // Paths come from the index, never from the request.
    const items = c.store.images(d.id, 'ok').map((r) => ({ abs: join(d.root, r.path), hash: r.hash!, path: r.path, label: r.label }));
    if (!items.length) throw new ApiError('bad-request', `dataset ${d.name} has no usable images`);
    const step = ref.step ?? ref.candidates[0]!.step;
    const engine = await engineOf(a.engine);
    // Each engine's features in their own file: the two agree within 1e-4, not bit for bit.
    const name = `run${run.id}-${step}-dataset${d.id}${engine === 'torch' ? '-torch' : ''}.safetensors`;
    return { ref, items, out: join(c.home, 'embeddings', name), engine };
  };
  const engineOf = async (choice?: EngineChoice): Promise<Engine> => {
    if (choice === undefined || choice === 'tfjs') return 'tfjs';
    const { torch } = await c.scheduler.backend();
    const engine = resolveEngine(choice, () => torch);
    if (engine === 'torch' && !torch.ok) throw new ApiError('bad-request', `engine: torch is unavailable: ${torch.reason}`);
    return engine;
  };
  const progress =
    (method: 'embeddings.create' | 'embeddings.similar' | 'embeddings.map', runId: number) => (done: number, total: number) =>
      c.emit({ type: 'job.progress', method, runId, done, total });
  return {
    'embeddings.create': async (a) => {
      const r = await c.scheduler.compute({ kind: 'embed', ...(await request(a)) }, progress('embeddings.create', a.runId));
      return r.file;
    },
    'embeddings.similar': async (a) => {
      const req = await request(a);
      const query = req.items.find((it) => it.path === a.path);
      if (!query) throw new ApiError('not-found', `${a.path} is not an image of dataset ${a.datasetId}`);
      const r = await c.scheduler.compute(
        { kind: 'embed', ...req, similar: { path: a.path, k: a.k } },
        progress('embeddings.similar', a.runId),
      );
      const shown = async (it: { abs: string; path: string; label: string | null }) => ({
        path: it.path,
        label: it.label,
        src: await thumbnail(it.abs, 96),
      });
      return {
        query: await shown(query),
        neighbours: await Promise.all((r.neighbours ?? []).map(async (n) => ({ ...(await shown(n)), score: n.score }))),
      };
    },
    'embeddings.map': async (a) => {
      const req = await request(a);
      const r = await c.scheduler.compute({ kind: 'embed', ...req, map: true }, progress('embeddings.map', a.runId));
      const { points, explained } = r.map!;
      return { explained, points: req.items.map((it, i) => ({ path: it.path, label: it.label, x: points[i]![0], y: points[i]![1] })) };
    },
  } satisfies Handlers;
};
