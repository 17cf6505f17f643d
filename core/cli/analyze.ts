import { blockGradientNorms } from '../analysis/gradients.js';
import { attentionAnalysis } from '../analysis/attention.js';
import { initBackend } from '../backend.js';
import { modelDims, parseRunConfig } from '../config.js';
import { backboneOf, paramsOf } from '../export/backbone.js';
import { homeDir, homePaths } from '../home.js';
import { LocalMIM } from '../model/localmim.js';
import { checkpointFor } from '../service/recorder.js';
import { Store } from '../store/store.js';
import { readRgb } from '../targets/image.js';
import { parse, UsageError } from './args.js';

export const summary = 'attention maps, NMI and KL per layer, and gradient norms of a run on one image';

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parse(argv, {
    image: { type: 'string' },
    query: { type: 'string' },
    home: { type: 'string' },
    backend: { type: 'string' },
    json: { type: 'boolean', default: false },
  });
  if (!positionals[0] || !values.image) throw new UsageError('usage: localmim analyze RUN[:STEP] --image FILE [--query PATCH] [--json]');
  await initBackend(values.backend);
  const store = new Store(homePaths(homeDir(values.home)).db);
  try {
    const { run: r, checkpoint } = checkpointFor(store, positionals[0]);
    const b = backboneOf(r, checkpoint);
    const img = await readRgb(values.image);
    const S = b.model.imgSize;
    if (img.width !== S || img.height !== S)
      throw new UsageError(`--image: ${values.image} is ${img.width}×${img.height}; this model takes ${S}×${S}`);
    const { L } = modelDims(b.model);
    const query = values.query === undefined ? Math.floor(L / 2) : Number(values.query);
    const layers = attentionAnalysis(paramsOf(b.tensors), b.model, b.tensors.get('pos_embed')!.values, img, query);
    let gradNorms: number[] | null = null;
    if (r.kind === 'pretrain') {
      const model = new LocalMIM(parseRunConfig(r.config).model, 0);
      model.params.assign(new Map([...checkpoint.tensors].filter(([n]) => !n.startsWith('optimizer.')).map(([n, t]) => [n, t.values])));
      gradNorms = blockGradientNorms(model, [img]);
      model.dispose();
    }
    const out = { runId: r.id, query, layers, gradNorms };
    if (values.json) return console.log(JSON.stringify(out));
    console.log('block   NMI     KL      grad-norm');
    for (const l of layers)
      console.log(
        `${String(l.block).padEnd(7)} ${l.nmi.toFixed(4)}  ${l.kl.toFixed(3).padStart(6)}  ${gradNorms?.[l.block]?.toExponential(2) ?? '—'}`,
      );
  } finally {
    store.close();
  }
}
