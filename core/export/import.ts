import { readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { DECODERS, parseRunConfig, swinDims, SWIN_SIZES, type ModelConfig } from '../config.js';
import { declare, specsOf, type ParamStore } from '../model/module.js';
import { paramStore } from '../model/params.js';
import { resizePosEmbed } from '../model/posEmbed.js';
import { encoderParams } from '../model/vit.js';
import { decodeSafetensors, type NamedTensor } from '../safetensors.js';
import type { Store } from '../store/store.js';
import { AdamW } from '../train/adamw.js';
import { saveCheckpoint } from '../train/checkpoint.js';
import { fromTimmSwin } from './timmSwin.js';
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
  const model = importedModel({ ...shape, g }, o.heads ?? modelArgsBeside(file).num_heads, file);
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
  const imgSize = o.imgSize ?? modelArgsBeside(file).img_size ?? 224;
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

interface ModelArgs {
  img_size?: number;
  num_heads?: number;
}

/** timm's `model_args` from a `config.json` beside the file; none without one. */
function modelArgsBeside(file: string): ModelArgs {
  try {
    return (JSON.parse(readFileSync(join(file, '..', 'config.json'), 'utf8')) as { model_args?: ModelArgs }).model_args ?? {};
  } catch {
    return {}; // no config.json beside the file
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
