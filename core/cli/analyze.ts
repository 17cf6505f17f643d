import { attentionAnalysis } from '../analysis/attention.js';
import { blockGradientNorms } from '../analysis/gradients.js';
import { modelDims, parseRunConfig } from '../config.js';
import { paramsOf } from '../export/backbone.js';
import { LocalMIM } from '../model/localmim.js';
import { parse } from './args.js';
import { checkpointAndImage } from './checkpoint-input.js';

export const summary = 'attention maps, NMI and KL per layer, and gradient norms of a run on one image';

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parse(argv, {
    image: { type: 'string' },
    query: { type: 'string' },
    home: { type: 'string' },
    backend: { type: 'string' },
    json: { type: 'boolean', default: false },
  });
  const {
    run: r,
    checkpoint,
    backbone: b,
    img,
  } = await checkpointAndImage(positionals[0], values.image, {
    ...values,
    usage: 'usage: localmim analyze RUN[:STEP] --image FILE [--query PATCH] [--json]',
  });
  const query = values.query === undefined ? Math.floor(modelDims(b.model).L / 2) : Number(values.query);
  const layers = attentionAnalysis(paramsOf(b.tensors), b.model, b.tensors.get('pos_embed')!.values, img, query);
  let gradNorms: number[] | null = null;
  if (r.kind === 'pretrain') {
    // Gradient norms need the pretraining loss, so the whole model with its decoders.
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
}
