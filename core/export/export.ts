import { mkdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fsyncFolder, writeWhole } from '../atomic.js';
import { modelDims, modelFamily, swinDims } from '../config.js';
import { UserError } from '../errors.js';
import { checkpointRef, loadRef, type CheckpointRef } from '../runs/checkpoints.js';
import { specOf } from '../runs/spec.js';
import type { MetricRow, Store } from '../store/store.js';
import { backboneOf, datasetHash, timmConfig, timmSwinConfig, type Backbone } from './backbone.js';
import { toTimmSwin } from './timmSwin.js';
import { encodeSafetensors } from '../safetensors.js';
import { buildLayersModel, saveLayersModel } from './tfjs.js';
import { toOnnx } from './onnx.js';
import type { EXPORT_FORMATS } from '../api.js';

export type ExportFormat = (typeof EXPORT_FORMATS)[number];

/** What an export needs from the database: the checkpoint to read, the dataset's fingerprint, the run's metrics. */
export interface ExportInput {
  ref: CheckpointRef;
  format: ExportFormat;
  data: { images: number; hash: string } | null;
  metrics: MetricRow[];
}

/**
 * Exports a run's backbone (and head, if fine-tuned): `model.safetensors` with timm names, a tfjs
 * LayersModel, or `model.onnx`; plus `config.json` and a model card. Written to a temp folder, then renamed into place.
 */
export async function exportRun(store: Store, spec: string, format: ExportFormat, out: string): Promise<{ dir: string; files: string[] }> {
  const input = exportInput(store, spec, format);
  const r = await writeExport(input, out);
  store.addExport(input.ref.run.id, format, out);
  return r;
}

/** Reads and checks what {@link writeExport} needs, from the database alone: a wrong request fails before any file is read. */
export function exportInput(store: Store, spec: string, format: ExportFormat): ExportInput {
  const ref = checkpointRef(store, spec);
  const { run } = ref;
  if (format === 'tfjs' && modelFamily(specOf(run).config.model) === 'swin')
    throw new UserError(`run ${run.id} is a Swin model: --format tfjs exports ViTs only; use --format safetensors (timm's Swin) or onnx`);
  return { ref, format, data: run.datasetId ? datasetHash(store, run.datasetId) : null, metrics: store.metrics(run.id) };
}

/** Writes the export folder `out` (the compute half of {@link exportRun}: a job process runs it for the service). */
export async function writeExport({ ref, format, data, metrics }: ExportInput, out: string): Promise<{ dir: string; files: string[] }> {
  const { run, checkpoint, step } = loadRef(ref);
  const b = backboneOf(run, checkpoint);
  const swin = modelFamily(b.model) === 'swin';
  const tmp = `${out}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  const files: string[] = [];
  const write = (file: string, data: Uint8Array | string) => {
    writeWhole(join(tmp, file), data);
    files.push(file);
  };
  if (format === 'safetensors')
    write(
      'model.safetensors',
      encodeSafetensors(swin ? toTimmSwin(b.tensors) : b.tensors, {
        format: 'pt',
        source: 'LocalMIM Studio',
        run: String(run.id),
        step: String(step),
      }),
    );
  else if (format === 'onnx') write('model.onnx', toOnnx(b, { source: 'LocalMIM Studio', run: String(run.id), step: String(step) }));
  else {
    const model = buildLayersModel(b);
    await saveLayersModel(model, write);
    model.dispose();
  }
  const config = swin ? timmSwinConfig(b) : timmConfig(b);
  write('config.json', JSON.stringify(config, null, 2) + '\n');
  const last = metrics.filter((m) => m.step <= step).at(-1);
  write(
    'README.md',
    modelCard({ b, format, runName: run.name, runId: run.id, kind: run.kind, step, epoch: checkpoint.state.epoch, data, last, config }),
  );
  rmSync(out, { recursive: true, force: true });
  mkdirSync(join(out, '..'), { recursive: true });
  fsyncFolder(tmp);
  renameSync(tmp, out);
  fsyncFolder(join(out, '..'));
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
  config: ReturnType<typeof timmConfig> | ReturnType<typeof timmSwinConfig>;
}): string {
  const swin = 'window_size' in o.config.model_args;
  const usage =
    o.format === 'onnx'
      ? onnxUsage(o.b)
      : swin
        ? swinUsage(o.config as ReturnType<typeof timmSwinConfig>, o.b.classes !== null)
        : o.format === 'safetensors'
          ? vitUsage(o.config as ReturnType<typeof timmConfig>, o.b.classes !== null)
          : [
              '```js',
              "const model = await tf.loadLayersModel('file://path/to/model.json');  // or an http(s) URL in the browser",
              'const [features] = [].concat(model.predict(images));  // images: [B, H, W, 3], ImageNet-normalised',
              '```',
            ];
  return [
    `# ${o.runName}`,
    '',
    `${describe(o.b)} ${o.kind === 'finetune' ? 'fine-tuned' : 'pretrained'} with LocalMIM Studio`,
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

function describe(b: Backbone): string {
  if (modelFamily(b.model) === 'swin') {
    const d = swinDims(b.model);
    return `A Swin backbone (${d.C}-d, stages of ${d.depths.join('/')} blocks, heads ${d.heads.join('/')}, window ${b.model.windowSize ?? 7}, patch ${d.p}, ${b.model.imgSize} px)`;
  }
  const { D, depth, heads, p } = modelDims(b.model);
  return `A ViT backbone (${D}-d, ${depth} blocks, ${heads} heads, patch ${p}, ${b.model.imgSize} px)`;
}

function vitUsage(config: ReturnType<typeof timmConfig>, classifier: boolean): string[] {
  const a = config.model_args;
  return [
    '```python',
    'import timm, torch',
    'from safetensors.torch import load_file',
    `model = timm.create_model("${config.architecture}", pretrained=False, img_size=${a.img_size}, patch_size=${a.patch_size},`,
    `                          embed_dim=${a.embed_dim}, depth=${a.depth}, num_heads=${a.num_heads}, num_classes=${config.num_classes}, global_pool="avg")`,
    `missing, unexpected = model.load_state_dict(load_file("model.safetensors"), strict=False)  # ${classifier ? 'nothing missing' : 'only fc_norm/head are new'}`,
    'x = ...  # [B, 3, H, W], ImageNet-normalised',
    'features = model.forward_features(x)[:, 1:].mean(1)  # the backbone features LocalMIM Studio computes',
    '```',
  ];
}

/** `model.onnx` with ONNX Runtime, in Python and in JavaScript: any batch size, channels first. */
function onnxUsage(b: Backbone): string[] {
  const S = b.model.imgSize;
  const [py, js] = b.classes
    ? ['features, logits = session.run(["features", "logits"]', 'features, logits']
    : ['features, = session.run(["features"]', 'features'];
  return [
    '```python',
    'import onnxruntime as ort',
    'session = ort.InferenceSession("model.onnx")',
    `x = ...  # np.float32 [B, 3, ${S}, ${S}], ImageNet-normalised`,
    `${py}, {"image": x})  # features: [B, D], as localmim features prints them`,
    '```',
    '',
    '```js',
    "import * as ort from 'onnxruntime-node';  // in the browser: onnxruntime-web",
    "const session = await ort.InferenceSession.create('model.onnx');",
    `const { ${js} } = await session.run({ image: new ort.Tensor('float32', x, [B, 3, ${S}, ${S}]) });  // x: a Float32Array`,
    '```',
  ];
}

function swinUsage(config: ReturnType<typeof timmSwinConfig>, classifier: boolean): string[] {
  const a = config.model_args;
  return [
    '```python',
    'import timm, torch',
    'from safetensors.torch import load_file',
    `model = timm.create_model("${config.architecture}", pretrained=False, img_size=${a.img_size}, patch_size=${a.patch_size}, window_size=${a.window_size},`,
    `                          embed_dim=${a.embed_dim}, depths=(${a.depths.join(', ')}), num_heads=(${a.num_heads.join(', ')}), num_classes=${config.num_classes})`,
    'model.load_state_dict(load_file("model.safetensors"))  # timm >= 0.9; relative_position_index and attn_mask are rebuilt by timm',
    'x = ...  # [B, 3, H, W], ImageNet-normalised',
    'features = model.forward_head(model.forward_features(x), pre_logits=True)  # the features LocalMIM Studio computes',
    '```',
    '',
    ...(classifier
      ? [
          'The official Swin fine-tuning normalises the pooled tokens (`head(norm(mean(x)))`); timm normalises before pooling',
          "(`head.fc(mean(norm(x)))`), so timm's logits from these weights differ slightly from the ones this run reported.",
          '',
        ]
      : []),
    "timm's Swin uses LayerNorm eps 1e-5; the official model 1e-6 (except each block's norm2): features agree to about 1e-5.",
  ];
}
