import { mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { basename, join } from 'node:path';
import { fsyncFolder, writeWhole } from '../atomic.js';
import { DECODERS, modelDims, modelFamily, parseRunConfig, swinDims, SWIN_SIZES, type ModelConfig } from '../config.js';
import { UserError } from '../errors.js';
import { checkpointRef, loadRef, type CheckpointId, type CheckpointRef } from '../runs/checkpoints.js';
import { specOf } from '../runs/spec.js';
import type { MetricRow, Store } from '../store/store.js';
import { saveCheckpoint } from '../train/checkpoint.js';
import { backboneOf, datasetHash, timmConfig, timmSwinConfig, type Backbone } from './backbone.js';
import { fromTimmSwin, toTimmSwin } from './timmSwin.js';
import { decodeSafetensors, encodeSafetensors, type NamedTensor } from '../safetensors.js';
import { buildLayersModel, saveLayersModel } from './tfjs.js';
import { toOnnx } from './onnx.js';
import { declare, specsOf } from '../model/module.js';
import { paramStore } from '../model/params.js';
import type { ParamStore } from '../model/module.js';
import { resizePosEmbed } from '../model/posEmbed.js';
import { encoderParams } from '../model/vit.js';
import { AdamW } from '../train/adamw.js';
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
export async function exportRun(
  store: Store,
  id: CheckpointId,
  format: ExportFormat,
  out: string,
): Promise<{ dir: string; files: string[] }> {
  const input = exportInput(store, id, format);
  const r = await writeExport(input, out);
  store.addExport(input.ref.run.id, format, out);
  return r;
}

/** Reads and checks what {@link writeExport} needs, from the database alone: a wrong request fails before any file is read. */
export function exportInput(store: Store, id: CheckpointId, format: ExportFormat): ExportInput {
  const ref = checkpointRef(store, id);
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

/** Default ViT head counts by width, for weights that do not say. */
const HEADS: Record<number, number> = { 192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16 };

/** Past these a file describes no ViT this app can train, only a huge allocation. */
const LIMITS = { D: 4096, depth: 64, patch: 64, grid: 64, mlpRatio: 8 };

/**
 * Imports timm/MAE-named ViT weights, or timm/official Swin weights, (safetensors) as a run with one checkpoint, to
 * fine-tune or to continue pretraining from. Shapes give the width, depth, patch and image size; heads come from a
 * `config.json` beside the file, `heads`, or the standard sizes. With `imgSize`, the position table is
 * resized to that image's patch grid (docs/method.md#imported-weights).
 */
export async function importWeights(
  store: Store,
  file: string,
  o: { heads?: number; imgSize?: number; name?: string; home: string; checkpointPath: (runId: number) => string },
): Promise<{ runId: number; model: ModelConfig }> {
  const { tensors } = decodeSafetensors(readFileSync(file), file);
  const strip = (n: string) => n.replace(/^(module\.|model\.|encoder\.)/, '');
  const named = new Map([...tensors].map(([n, t]) => [strip(n), t]));
  if (named.has('layers.0.blocks.0.attn.relative_position_bias_table')) return importSwin(store, file, named, o);
  const shape = vitShape(named, file);
  const g = o.imgSize === undefined ? shape.g : gridFor(o.imgSize, shape.p, file);
  const model = importedModel({ ...shape, g }, o.heads ?? headsBeside(file), file);
  const params = paramStore(model, 0);
  const known = new Map([...named].filter(([n]) => params.vars.has(n)).map(([n, t]) => [n, t.values]));
  const pos = named.get('pos_embed')?.values;
  if (pos) {
    const table = shape.g === g ? Float32Array.from(pos) : resizePosEmbed(pos, shape.D, shape.g, g);
    // The encoder gives the class token no position (that row is zero when trained here): fold the file's row into cls_token.
    known.set(
      'cls_token',
      known.get('cls_token')!.map((v, i) => v + table[i]!),
    );
    known.set('pos_embed', table.fill(0, 0, shape.D));
  }
  params.assign(known);
  return saveImported(store, file, params, model, o);
}

/** An imported model's weights as a finished run with one checkpoint at step 0 (disposes `params`). */
async function saveImported(
  store: Store,
  file: string,
  params: ParamStore,
  model: ModelConfig,
  o: { name?: string; checkpointPath: (runId: number) => string },
): Promise<{ runId: number; model: ModelConfig }> {
  const run = store.createRun({
    name: o.name ?? `imported ${basename(file)}`,
    datasetId: null,
    config: { model },
    backend: 'import',
    kind: 'import',
  });
  const optimizer = new AdamW(new Map(), parseRunConfig({}).optim);
  const path = o.checkpointPath(run.id);
  const written = await saveCheckpoint(path, { params }, optimizer, { step: 0, epoch: 0, loss: null, config: { model } });
  store.addCheckpoint({ runId: run.id, step: 0, epoch: 0, loss: null, path, ...written });
  store.updateRun(run.id, { status: 'finished', pid: null });
  params.dispose();
  return { runId: run.id, model };
}

/** Past these a file describes no Swin this app can train. */
const SWIN_LIMITS = { C: 1024, stages: 8, depth: 64, patch: 64, window: 32 };

/**
 * Imports timm or official Swin weights (docs/method.md#swin-export) as a pretraining-model run: stages, blocks, heads,
 * windows, width and patch from the shapes; the image size from `imgSize`, a `config.json` beside the file, else 224.
 * The file's final `norm` becomes the last stage's latent norm; its head is not imported.
 */
async function importSwin(
  store: Store,
  file: string,
  named: ReadonlyMap<string, NamedTensor>,
  o: { imgSize?: number; name?: string; checkpointPath: (runId: number) => string },
): Promise<{ runId: number; model: ModelConfig }> {
  const fail = (what: string): never => {
    throw new Error(`${file}: ${what}`);
  };
  const official = fromTimmSwin(named);
  const shapeOf = (name: string) => official.get(name)?.shape ?? fail(`no tensor ${name}: not a Swin with timm or official names`);
  const pe = shapeOf('patch_embed.proj.weight');
  const [C, , p] = pe as [number, number, number];
  if (!same(pe, [C, 3, p, p]) || C > SWIN_LIMITS.C || p > SWIN_LIMITS.patch)
    fail(`patch_embed.proj.weight has shape [${pe}], expected [C, 3, p, p] with C ≤ ${SWIN_LIMITS.C}, p ≤ ${SWIN_LIMITS.patch}`);
  const depths: number[] = [];
  for (const n of official.keys()) {
    const m = /^layers\.(\d+)\.blocks\.(\d+)\./.exec(n);
    if (!m) continue;
    const [i, j] = [Number(m[1]), Number(m[2])];
    if (i >= SWIN_LIMITS.stages || j >= SWIN_LIMITS.depth) fail(`${n}: more stages or blocks than a Swin this app can train`);
    depths[i] = Math.max(depths[i] ?? 0, j + 1);
  }
  if ([...depths.keys()].some((i) => !depths[i])) fail('a stage without blocks: the layers.i.blocks.j tensors have a gap');
  const tables = depths.map((_, i) => shapeOf(`layers.${i}.blocks.0.attn.relative_position_bias_table`));
  const windows = tables.map((t) => (Math.sqrt(t[0]!) + 1) / 2);
  if (windows.some((w) => !Number.isInteger(w) || w > SWIN_LIMITS.window)) fail('a relative_position_bias_table is not [(2w−1)², heads]');
  const hidden = shapeOf('layers.0.blocks.0.mlp.fc1.weight')[0]!;
  const imgSize = o.imgSize ?? imgSizeBeside(file) ?? 224;
  const stageHeads = tables.map((t) => t[1]!);
  const preset = Object.entries(SWIN_SIZES).find(
    ([, s]) => s.D === C && same(s.depths, depths) && same(s.heads, stageHeads) && s.imgSize === imgSize,
  )?.[0];
  const windowSize = Math.max(...windows);
  const size = (preset ?? 'swin-t') as keyof typeof SWIN_SIZES;
  let model: ModelConfig;
  try {
    model = parseRunConfig({
      model: {
        size,
        ...(!preset && { D: C, depths, stageHeads }),
        ...(windowSize !== SWIN_SIZES[size].window && { windowSize }),
        imgSize,
        patchSize: p,
        mlpRatio: hidden / C,
        ...DECODERS.swin,
      },
    }).model;
  } catch (err) {
    return fail((err as Error).message);
  }
  const d = swinDims(model);
  d.windows.forEach((w, i) => {
    if (w !== windows[i]) fail(`at ${imgSize} px stage ${i} has window ${w}, but its bias table is for ${windows[i]}: pass --img`);
  });
  const params = paramStore(model, 0);
  const last = `norm.${depths.length - 1}.`;
  const known = new Map<string, Float32Array>();
  for (const [n, t] of official) {
    const name = n.startsWith('norm.') && !/^norm\.\d/.test(n) ? last + n.slice('norm.'.length) : n;
    const v = params.vars.get(name);
    if (!v) continue; // the head, and anything the pretraining model has no place for
    if (!same(t.shape, v.shape)) {
      params.dispose();
      fail(`${n} has shape [${t.shape}], expected [${v.shape}]`);
    }
    known.set(name, t.values);
  }
  const missing = [...params.vars.keys()].filter((n) => (n.startsWith('layers.') || n.startsWith('patch_embed.')) && !known.has(n));
  if (missing.length) {
    params.dispose();
    fail(`no tensor ${missing[0]} (${missing.length} backbone tensors missing)`);
  }
  params.assign(known);
  return saveImported(store, file, params, model, o);
}

function imgSizeBeside(file: string): number | undefined {
  try {
    return (JSON.parse(readFileSync(join(file, '..', 'config.json'), 'utf8')) as { model_args?: { img_size?: number } }).model_args
      ?.img_size;
  } catch {
    return undefined; // no config.json beside the file
  }
}

function headsBeside(file: string): number | undefined {
  try {
    return (JSON.parse(readFileSync(join(file, '..', 'config.json'), 'utf8')) as { model_args?: { num_heads?: number } }).model_args
      ?.num_heads;
  } catch {
    return undefined; // no config.json beside the file
  }
}

interface VitShape {
  D: number;
  depth: number;
  p: number;
  g: number;
  mlpRatio: number;
}

function importedModel(s: VitShape, heads: number | undefined, file: string): ModelConfig {
  heads ??= HEADS[s.D];
  if (!heads) throw new Error(`${file}: cannot tell the number of heads of a ${s.D}-wide ViT: pass --heads`);
  try {
    return parseRunConfig({ model: { D: s.D, depth: s.depth, heads, patchSize: s.p, imgSize: s.g * s.p, mlpRatio: s.mlpRatio } }).model;
  } catch (err) {
    throw new Error(`${file}: ${(err as Error).message}`);
  }
}

const same = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((v, i) => v === b[i]);

/**
 * The ViT a state dict describes, checked from its shapes alone before any model is allocated: every
 * tensor the model needs present with the shape its width, depth and patch imply, within LIMITS.
 */
function vitShape(named: ReadonlyMap<string, NamedTensor>, file: string): VitShape {
  const fail = (what: string): never => {
    throw new Error(`${file}: ${what}`);
  };
  const shapeOf = (name: string) => named.get(name)?.shape ?? fail(`no tensor ${name}: not a ViT with timm or MAE names`);
  const cls = shapeOf('cls_token');
  const D = cls[2] ?? 0;
  if (!same(cls, [1, 1, D]) || D < 4 || D > LIMITS.D) fail(`cls_token has shape [${cls}], expected [1, 1, D] with 4 ≤ D ≤ ${LIMITS.D}`);
  const pe = shapeOf('patch_embed.proj.weight');
  const p = pe[2] ?? 0;
  if (!same(pe, [D, 3, p, p]) || p < 1 || p > LIMITS.patch)
    fail(`patch_embed.proj.weight has shape [${pe}], expected [${D}, 3, p, p] with 1 ≤ p ≤ ${LIMITS.patch}`);
  const depth = blockCount([...named.keys()], fail);
  const hidden = shapeOf('blocks.0.mlp.fc1.weight')[0] ?? 0;
  if (hidden % D !== 0 || hidden < D || hidden > LIMITS.mlpRatio * D)
    fail(`blocks.0.mlp.fc1.weight has ${hidden} outputs, expected a multiple of ${D} up to ${LIMITS.mlpRatio * D}`);
  const g = grid(named.get('pos_embed')?.shape, D, fail);
  const shape = { D, depth, p, g, mlpRatio: hidden / D };
  for (const { name, shape: expected } of specsOf(declare(encoderParams(shape)))) {
    // Without pos_embed the grid is the default one; a ViT without qkv biases (timm qkv_bias=False) is this one with
    // them zero, as a new model starts.
    if ((name === 'pos_embed' || name.endsWith('.attn.qkv.bias')) && !named.has(name)) continue;
    const s = shapeOf(name);
    if (!same(s, expected)) fail(`${name} has shape [${s}], expected [${expected}]`);
  }
  return shape;
}

/** Blocks 0…depth−1, depth the highest index named plus one (a gap shows up as a missing tensor). */
function blockCount(names: string[], fail: (what: string) => never): number {
  let depth = 0;
  for (const n of names) {
    const m = /^blocks\.(\d+)\./.exec(n);
    if (!m) continue;
    if (Number(m[1]) >= LIMITS.depth) fail(`${n}: more than ${LIMITS.depth} blocks, more than a ViT this app can train`);
    depth = Math.max(depth, Number(m[1]) + 1);
  }
  return depth || fail('no tensor blocks.0.*: not a ViT with timm or MAE names');
}

/** The patch-grid side of an `imgSize` input. */
function gridFor(imgSize: number, p: number, file: string): number {
  const g = imgSize / p;
  if (!Number.isInteger(g) || g < 1 || g > LIMITS.grid)
    throw new Error(`${file}: imgSize ${imgSize} must be a multiple of its patch size ${p}, up to ${LIMITS.grid * p} px`);
  return g;
}

/** The patch-grid side from pos_embed [1, 1 + g², D]; 14 (224 px at patch 16) without one. */
function grid(shape: number[] | undefined, D: number, fail: (what: string) => never): number {
  if (!shape) return 14;
  const g = Math.round(Math.sqrt((shape[1] ?? 0) - 1));
  if (!same(shape, [1, 1 + g * g, D]) || g < 1 || g > LIMITS.grid)
    fail(`pos_embed has shape [${shape}], expected [1, 1 + g², ${D}] with 1 ≤ g ≤ ${LIMITS.grid}`);
  return g;
}
