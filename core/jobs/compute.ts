import sharp from 'sharp';
import { attentionAnalysis } from '../analysis/attention.js';
import { embedFolder, nearest, pca2, readEmbeddings } from '../analysis/embed.js';
import { analyzeSet } from '../analysis/set.js';
import { computePath, initBackend } from '../backend.js';
import { evalImage } from '../data/preprocess.js';
import { detectTorch } from '../engine.js';
import { backboneOf, paramsOf } from '../export/backbone.js';
import { writeExport } from '../export/export.js';
import { loadRef } from '../runs/checkpoints.js';
import { torchEmbedder } from '../runs/torch.js';
import { writeScaleOut } from '../scale-out/folder.js';
import type { ComputeRequest } from './protocol.js';

type Request<K extends ComputeRequest['kind']> = Extract<ComputeRequest, { kind: K }>;
export type Steps = (done: number, total: number) => void;

/** What each compute job does, in a job process; the service checked the request and shapes the answer. */
export const COMPUTE = {
  /**
   * The service never loads a backend itself: this tells it which one its jobs choose, the path a step takes there,
   * and the torch engine's interpreter and devices, or why there is none.
   */
  backend: async () => {
    const report = await initBackend();
    return { report, computePath: computePath(report.chosen), torch: detectTorch() };
  },
  analysis: async (r: Request<'analysis'>) => {
    const { run, checkpoint } = loadRef(r.ref);
    const b = backboneOf(run, checkpoint);
    const img = await evalImage(r.image, b.model.imgSize);
    const layers = await attentionAnalysis(paramsOf(b.tensors), b.model, img, r.query);
    const png = await sharp(img.data, { raw: { width: img.width, height: img.height, channels: 3 } })
      .png()
      .toBuffer();
    return { image: `data:image/png;base64,${png.toString('base64')}`, layers };
  },
  'analysis-set': async (r: Request<'analysis-set'>, steps: Steps) => {
    const { run, checkpoint } = loadRef(r.ref);
    const b = backboneOf(run, checkpoint);
    const images = await Promise.all(r.images.map((path) => evalImage(path, b.model.imgSize)));
    return analyzeSet(paramsOf(b.tensors), b.model, images, r.seed, { run, checkpoint }, steps);
  },
  export: (r: Request<'export'>) => writeExport(r.input, r.out),
  'scale-out': (r: Request<'scale-out'>) => writeScaleOut(r.plan),
  embed: async (r: Request<'embed'>, steps: Steps) => {
    const { run, checkpoint } = loadRef(r.ref);
    const b = backboneOf(run, checkpoint);
    const torch = r.engine === 'torch' ? torchEmbedder(detectTorch(), b.tensors, b.model) : undefined;
    const file = await embedFolder(paramsOf(b.tensors), b.model, r.items, {
      out: r.out,
      weights: checkpoint.hash,
      onProgress: steps,
      embed: torch?.embed,
    }).finally(() => torch?.dispose());
    const e = r.similar || r.map ? readEmbeddings(r.out) : undefined;
    const q = r.similar ? r.items.findIndex((it) => it.path === r.similar!.path) : -1;
    return {
      file,
      neighbours: e && q >= 0 ? nearest(e, q, r.similar!.k).map((n) => ({ ...r.items[n.index]!, score: n.score })) : undefined,
      map: e && r.map ? pca2(e) : undefined,
    };
  },
} satisfies { [K in ComputeRequest['kind']]: (r: Request<K>, steps: Steps) => Promise<unknown> };

/** What a compute job of this kind answers. */
export type ComputeResult<K extends ComputeRequest['kind']> = Awaited<ReturnType<(typeof COMPUTE)[K]>>;

/** Runs one compute job on this machine's backend. */
export async function runCompute(req: ComputeRequest, steps: Steps): Promise<unknown> {
  await initBackend();
  return (COMPUTE[req.kind] as (r: ComputeRequest, steps: Steps) => Promise<unknown>)(req, steps);
}
