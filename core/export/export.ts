import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { modelDims, parseRunConfig, type ModelConfig } from '../config.js';
import { checkpointFor } from '../service/recorder.js';
import type { Store } from '../store/store.js';
import { saveCheckpoint } from '../train/checkpoint.js';
import { backboneOf, datasetHash, timmConfig, type Backbone } from './backbone.js';
import { decodeSafetensors, encodeSafetensors } from './safetensors.js';
import { buildLayersModel, saveLayersModel } from './tfjs.js';
import { ParamStore } from '../model/params.js';
import { AdamW } from '../train/adamw.js';

export type ExportFormat = 'safetensors' | 'tfjs';

/**
 * Exports a run's backbone (and head, if fine-tuned): `model.safetensors` with timm names, or a tfjs
 * LayersModel; plus `config.json` and a model card. Written to a temp folder, then renamed into place.
 */
export async function exportRun(store: Store, spec: string, format: ExportFormat, out: string): Promise<{ dir: string; files: string[] }> {
  const { run, checkpoint, step } = checkpointFor(store, spec);
  const b = backboneOf(run, checkpoint);
  const tmp = `${out}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  const files: string[] = [];
  const write = (file: string, data: Uint8Array | string) => {
    writeFileSync(join(tmp, file), data);
    files.push(file);
  };
  if (format === 'safetensors')
    write(
      'model.safetensors',
      encodeSafetensors(b.tensors, { format: 'pt', source: 'LocalMIM Studio', run: String(run.id), step: String(step) }),
    );
  else {
    const model = buildLayersModel(b);
    await saveLayersModel(model, write);
    model.dispose();
  }
  const config = timmConfig(b);
  write('config.json', JSON.stringify(config, null, 2) + '\n');
  const data = run.datasetId ? datasetHash(store, run.datasetId) : null;
  const last = store
    .metrics(run.id)
    .filter((m) => m.step <= step)
    .at(-1);
  write(
    'README.md',
    modelCard({ b, format, runName: run.name, runId: run.id, kind: run.kind, step, epoch: checkpoint.state.epoch, data, last, config }),
  );
  rmSync(out, { recursive: true, force: true });
  mkdirSync(join(out, '..'), { recursive: true });
  renameSync(tmp, out);
  store.addExport(run.id, format, out);
  return { dir: out, files };
}

function modelCard(o: {
  b: Backbone;
  format: ExportFormat;
  runName: string;
  runId: number;
  kind: string;
  step: number;
  epoch: number;
  data: { images: number; hash: string } | null;
  last: { loss: number; losses: number[]; valTop1?: number | null } | undefined;
  config: ReturnType<typeof timmConfig>;
}): string {
  const { D, depth, heads, p } = modelDims(o.b.model);
  const a = o.config.model_args;
  const usage =
    o.format === 'safetensors'
      ? [
          '```python',
          'import timm, torch',
          'from safetensors.torch import load_file',
          `model = timm.create_model("${o.config.architecture}", pretrained=False, img_size=${a.img_size}, patch_size=${a.patch_size},`,
          `                          embed_dim=${a.embed_dim}, depth=${a.depth}, num_heads=${a.num_heads}, num_classes=${o.config.num_classes}, global_pool="avg")`,
          `missing, unexpected = model.load_state_dict(load_file("model.safetensors"), strict=False)  # ${o.b.classes ? 'nothing missing' : 'only fc_norm/head are new'}`,
          'x = ...  # [B, 3, H, W], ImageNet-normalised',
          'features = model.forward_features(x)[:, 1:].mean(1)  # the backbone features LocalMIM Studio computes',
          '```',
        ]
      : [
          '```js',
          "const model = await tf.loadLayersModel('file://path/to/model.json');  // or an http(s) URL in the browser",
          'const [features] = [].concat(model.predict(images));  // images: [B, H, W, 3], ImageNet-normalised',
          '```',
        ];
  return [
    `# ${o.runName}`,
    '',
    `A ViT backbone (${D}-d, ${depth} blocks, ${heads} heads, patch ${p}, ${o.b.model.imgSize} px) ${o.kind === 'finetune' ? 'fine-tuned' : 'pretrained'} with LocalMIM Studio`,
    `(run ${o.runId}, step ${o.step}, epoch ${o.epoch.toFixed(2)}). Decoders and HOG layers are not included.`,
    '',
    '| | |',
    '| --- | --- |',
    `| method | LocalMIM (${o.b.model.variant}, ${o.b.model.target} targets${o.b.model.target === 'hog' ? `, ${o.b.model.nbins} bins` : ''}, mask ratio ${o.b.model.maskRatio}) |`,
    `| dataset | ${o.data ? `${o.data.images} images, content sha256 ${o.data.hash}` : 'unknown'} |`,
    `| final losses | ${o.last ? `${o.last.loss.toFixed(4)}${o.last.losses.length ? ` (per scale ${o.last.losses.map((l) => l.toFixed(4)).join(', ')})` : ''}` : '—'} |`,
    ...(o.b.classes
      ? [
          `| classes | ${o.b.classes.join(', ')} |`,
          `| validation top-1 | ${o.last?.valTop1 != null ? `${(100 * o.last.valTop1).toFixed(1)} %` : '—'} |`,
        ]
      : []),
    '| licence | (fill in: the licence of the training images applies to these weights) |',
    '',
    '## Use',
    '',
    ...usage,
    '',
    'Inputs: RGB at the size above, scaled to 0–1 and normalised with mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).',
    '',
    '## Configuration',
    '',
    '```json',
    JSON.stringify(o.b.model, null, 2),
    '```',
    '',
  ].join('\n');
}

/** Default ViT head counts by width, for weights that do not say. */
const HEADS: Record<number, number> = { 192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16 };

/**
 * Imports timm/MAE-named ViT weights (safetensors) as a run with one checkpoint, to fine-tune or to
 * continue pretraining from. Shapes give the width, depth, patch and image size; heads come from a
 * `config.json` beside the file, `heads`, or the standard sizes.
 */
export function importWeights(
  store: Store,
  file: string,
  o: { heads?: number; name?: string; home: string; checkpointPath: (runId: number) => string },
): { runId: number; model: ModelConfig } {
  const { tensors } = decodeSafetensors(readFileSync(file), file);
  const strip = (n: string) => n.replace(/^(module\.|model\.|encoder\.)/, '');
  const named = new Map([...tensors].map(([n, t]) => [strip(n), t]));
  const cls = named.get('cls_token');
  const pe = named.get('patch_embed.proj.weight');
  if (!cls || !pe) throw new Error(`${file}: no cls_token / patch_embed.proj.weight: not a ViT with timm or MAE names`);
  const D = cls.shape[2]!;
  const depth = new Set([...named.keys()].filter((n) => n.startsWith('blocks.')).map((n) => n.split('.')[1])).size;
  const p = pe.shape[2]!;
  const N = (named.get('pos_embed')?.shape[1] ?? 197) - 1;
  let heads = o.heads ?? HEADS[D];
  try {
    heads ??= (JSON.parse(readFileSync(join(file, '..', 'config.json'), 'utf8')) as { model_args?: { num_heads?: number } }).model_args
      ?.num_heads;
  } catch {
    // no config.json beside the file
  }
  if (!heads) throw new Error(`${file}: cannot tell the number of heads of a ${D}-wide ViT: pass --heads`);
  const model = parseRunConfig({ model: { D, depth, heads, patchSize: p, imgSize: Math.round(Math.sqrt(N)) * p } }).model;
  const params = new ParamStore(model, 0);
  const known = new Map([...named].filter(([n]) => params.vars.has(n) || n === 'pos_embed').map(([n, t]) => [n, t.values]));
  params.assign(known);
  const run = store.createRun({
    name: o.name ?? `imported ${basename(file)}`,
    datasetId: null,
    config: { model },
    backend: 'import',
    kind: 'import',
  });
  const optimizer = new AdamW(new Map(), parseRunConfig({}).optim);
  const path = o.checkpointPath(run.id);
  const written = saveCheckpoint(path, { params }, optimizer, { step: 0, epoch: 0, loss: null, config: { model } });
  store.addCheckpoint({ runId: run.id, step: 0, epoch: 0, loss: null, path, ...written });
  store.updateRun(run.id, { status: 'finished', pid: null });
  params.dispose();
  return { runId: run.id, model };
}
