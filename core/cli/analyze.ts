import { attentionAnalysis } from '../analysis/attention.js';
import { blockGradientNorms } from '../analysis/gradients.js';
import { modelDims, parseRunConfig } from '../config.js';
import { paramsOf } from '../export/backbone.js';
import { LocalMIM } from '../model/localmim.js';
import { nonNegativeInt, parse, UsageError } from './args.js';
import { checkpointAndImage } from './checkpoint-input.js';

export const summary = 'attention maps, NMI and KL per layer, and gradient norms of a run on one image';

const OPTIONS = {
  image: { type: 'string', arg: 'FILE', help: "the image, at the model's input size (required)" },
  query: { type: 'string', arg: 'PATCH', help: 'patch index (row-major, from 0) whose attention maps to show (default: the middle one)' },
  home: { type: 'string', arg: 'DIR', help: 'data folder (default: LOCALMIM_HOME, else the per-user app data folder)' },
  backend: { type: 'string', arg: 'NAME', help: 'tfjs backend to use (default: the fastest that works; see localmim doctor)' },
  json: { type: 'boolean', default: false, help: 'print the maps and statistics as JSON' },
} as const;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parse(argv, OPTIONS, { usage: 'localmim analyze RUN[:STEP] --image FILE [options]', summary });
  // The format is checked before the slow load; the range needs the model.
  const asked = values.query === undefined ? undefined : nonNegativeInt('query', values.query);
  const { run: r, checkpoint, backbone: b, img } = await checkpointAndImage(positionals[0], values.image, values);
  const { L } = modelDims(b.model);
  if (asked !== undefined && asked >= L) throw new UsageError(`--query: patch ${asked} is out of range: this model has patches 0…${L - 1}`);
  const query = asked ?? Math.floor(L / 2);
  const layers = await attentionAnalysis(paramsOf(b.tensors), b.model, img, query);
  let gradNorms: number[] | null = null;
  if (r.kind === 'pretrain') {
    // Gradient norms need the pretraining loss, so the whole model with its decoders.
    const model = new LocalMIM(parseRunConfig(r.config).model, 0);
    model.params.assign(new Map([...checkpoint.tensors].filter(([n]) => !n.startsWith('optimizer.')).map(([n, t]) => [n, t.values])));
    gradNorms = await blockGradientNorms(model, [img]);
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
