import { join } from 'node:path';
import { attentionAnalysis, checkAnalyzable } from '../analysis/attention.js';
import { blockGradientNorms, lossModelOf } from '../analysis/gradients.js';
import { analyzeSet, chooseImages, type Spread } from '../analysis/set.js';
import { swinWindowAttention } from '../analysis/swinAttention.js';
import { modelDims, modelFamily } from '../config.js';
import type { Backbone } from '../export/backbone.js';
import type { Rgb8 } from '../image.js';
import { resolveFolder } from '../data/indexer.js';
import { paramsOf } from '../export/backbone.js';
import { homeDir, homePaths } from '../home.js';
import { Store, type RunRow } from '../store/store.js';
import type { LoadedCheckpoint } from '../train/checkpoint.js';
import { homeFlag, nonNegativeInt, parse, positiveInt, UsageError } from './args.js';
import { checkpointAndImage, checkpointOf, loadImage } from './checkpoint-input.js';
import { indexWithProgress } from './index-cmd.js';

export const summary =
  'attention maps, NMI and KL per layer, and gradient norms of a run: on one image, or over a set of images (Swin: per window, one image)';

const DEFAULT_IMAGES = 64;

const OPTIONS = {
  image: { type: 'string', arg: 'FILE', help: "one image, at the model's input size: its maps and statistics" },
  query: {
    type: 'string',
    arg: 'PATCH',
    help: 'with --image: patch index (row-major, from 0) whose attention maps to show (default: the middle one)',
  },
  data: {
    type: 'string',
    arg: 'DIR',
    help: 'a folder of images (indexed like localmim index): statistics over a set of them, mean ± std and quartiles',
  },
  images: {
    type: 'string',
    arg: 'N',
    help: `with --data: how many images, chosen by --seed; all of them when the folder has fewer (default ${DEFAULT_IMAGES})`,
  },
  seed: { type: 'string', arg: 'S', help: "with --data: seed of the images' choice and of their masks for the gradient norms (default 0)" },
  home: homeFlag,
  backend: { type: 'string', arg: 'NAME', help: 'tfjs backend to use (default: the fastest that works; see localmim doctor)' },
  json: { type: 'boolean', default: false, help: 'print the maps and statistics as JSON' },
} as const;

type Values = ReturnType<typeof parse<typeof OPTIONS>>['values'];

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parse(argv, OPTIONS, {
    usage: 'localmim analyze RUN[:STEP] (--image FILE [--query PATCH] | --data DIR [--images N] [--seed S]) [options]',
    summary,
  });
  if (values.image !== undefined && values.data !== undefined) throw new UsageError('give --image FILE or --data DIR, not both');
  if (values.data !== undefined) return overSet(positionals[0], values.data, values);
  for (const flag of ['images', 'seed'] as const) if (values[flag] !== undefined) throw new UsageError(`--${flag} goes with --data DIR`);
  return onImage(positionals[0], values);
}

async function onImage(spec: string | undefined, values: Values): Promise<void> {
  if (!values.image && spec) throw new UsageError('give --image FILE (one image) or --data DIR (a set of images)');
  // The format is checked before the slow load; the range needs the model.
  const asked = values.query === undefined ? undefined : nonNegativeInt('query', values.query);
  const { run: r, checkpoint, backbone: b, img } = await checkpointAndImage(spec, values.image, values);
  if (modelFamily(b.model) === 'swin') return swinOnImage(r, checkpoint, b, img, asked, values.json);
  const { L } = modelDims(b.model);
  if (asked !== undefined && asked >= L) throw new UsageError(`--query: patch ${asked} is out of range: this model has patches 0…${L - 1}`);
  const query = asked ?? Math.floor(L / 2);
  const layers = await attentionAnalysis(paramsOf(b.tensors), b.model, img, query);
  const gradNorms = await gradientNorms(r, checkpoint, img);
  const out = { runId: r.id, query, layers, gradNorms };
  if (values.json) return console.log(JSON.stringify(out));
  console.log('block   NMI     KL      grad-norm');
  for (const l of layers)
    console.log(
      `${String(l.block).padEnd(7)} ${l.nmi.toFixed(4)}  ${l.kl.toFixed(3).padStart(6)}  ${gradNorms?.[l.block]?.toExponential(2) ?? '—'}`,
    );
}

/** Per encoder block, the norm of the pretraining loss's gradient on one image (paper Fig. 5); null outside pretraining. */
async function gradientNorms(r: RunRow, checkpoint: LoadedCheckpoint, img: Rgb8): Promise<number[] | null> {
  if (r.kind !== 'pretrain') return null;
  // The loss needs the whole model with its decoders.
  const model = lossModelOf(r, checkpoint);
  try {
    return await blockGradientNorms(model, [img]);
  } finally {
    model.dispose();
  }
}

/** Swin's per-window maps and statistics on one image, and the gradient norm of each block (stage by stage). */
async function swinOnImage(
  r: RunRow,
  checkpoint: LoadedCheckpoint,
  b: Backbone,
  img: Rgb8,
  asked: number | undefined,
  json: boolean,
): Promise<void> {
  const g0 = b.model.imgSize / b.model.patchSize;
  if (asked !== undefined && asked >= g0 * g0)
    throw new UsageError(`--query: patch ${asked} is out of range: this model has patches 0…${g0 * g0 - 1}`);
  const query = asked ?? Math.floor((g0 * g0) / 2);
  const layers = await swinWindowAttention(paramsOf(b.tensors), b.model, img, query);
  const gradNorms = await gradientNorms(r, checkpoint, img);
  if (json) return console.log(JSON.stringify({ runId: r.id, query, layers, gradNorms }));
  console.log('stage  block  window  shift  NMI     KL (within each window)  grad-norm');
  for (const [i, l] of layers.entries())
    console.log(
      `${String(l.stage).padEnd(6)} ${String(l.block).padEnd(6)} ${String(l.window).padEnd(7)} ${String(l.shift).padEnd(6)} ${l.nmi.toFixed(4)}  ${l.kl.toFixed(3).padEnd(23)}  ${gradNorms?.[i]?.toExponential(2) ?? '—'}`,
    );
}

async function overSet(spec: string | undefined, dir: string, values: Values): Promise<void> {
  if (values.query !== undefined) throw new UsageError('--query goes with --image FILE: over a set there are no maps');
  const requested = values.images === undefined ? DEFAULT_IMAGES : positiveInt('images', values.images);
  const seed = values.seed === undefined ? 0 : nonNegativeInt('seed', values.seed);
  await resolveFolder(dir).catch((err: Error) => {
    throw new UsageError(`--data: ${err.message}`);
  });
  const { run: r, checkpoint, backbone: b } = await checkpointOf(spec, values);
  checkAnalyzable(b.model, r.id, 'analyze --data');
  const { root, paths: all } = await indexed(dir, values);
  if (!all.length) throw new UsageError(`--data: ${dir} has no usable images (localmim index ${dir} lists what was rejected)`);
  const paths = chooseImages(all, requested, seed);
  if (paths.length < requested) console.error(`--images ${requested}: ${dir} has ${paths.length} usable images; using all of them`);
  const images = [];
  for (const p of paths) images.push(await loadImage(join(root, p), b.model.imgSize, '--data'));
  const { layers, gradNorms } = await analyzeSet(paramsOf(b.tensors), b.model, images, seed, { run: r, checkpoint });
  const out = { runId: r.id, images: { root, requested, used: paths.length, seed, paths }, layers, gradNorms };
  if (values.json) return console.log(JSON.stringify(out));
  console.log(`${paths.length} images of ${root} (seed ${seed}); per block: mean ± std [min … max]`);
  const fmt = (s: Spread, f: (v: number) => string) => `${f(s.mean)} ± ${f(s.std)} [${f(s.min)} … ${f(s.max)}]`;
  const rows = layers.map((l) => [
    String(l.block),
    fmt(l.nmi, (v) => v.toFixed(4)),
    fmt(l.kl, (v) => v.toFixed(3)),
    gradNorms ? fmt(gradNorms[l.block]!, (v) => v.toExponential(2)) : '—',
  ]);
  const table = [['block', 'NMI', 'KL', 'grad-norm'], ...rows];
  const widths = table[0]!.map((_, c) => Math.max(...table.map((row) => row[c]!.length)));
  for (const row of table)
    console.log(
      row
        .map((cell, c) => cell.padEnd(widths[c]!))
        .join('  ')
        .trimEnd(),
    );
}

/** The folder indexed into the home's store (incrementally, as `localmim index`): its usable images, by path. */
async function indexed(dir: string, o: { home?: string; json?: boolean }): Promise<{ root: string; paths: string[] }> {
  const store = new Store(homePaths(homeDir(o.home)).db);
  try {
    const s = await indexWithProgress(store, dir, { quiet: o.json });
    return { root: s.root, paths: store.images(s.datasetId, 'ok').map((row) => row.path) };
  } finally {
    store.close();
  }
}
