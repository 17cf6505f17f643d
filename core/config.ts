import { z } from 'zod';
import { parseRandAugment } from './data/randaugment.js';
import { OFFICIAL_AUGMENT, OFFICIAL_SCHEDULE, SHORT_PRETRAINING } from './recipe.js';

/** Encoder shapes of the paper's models (docs/method.md#model-sizes); ViT-T is DeiT-Tiny's shape. */
export const MODEL_SIZES = {
  'vit-tiny': { D: 192, depth: 12, heads: 3 },
  'vit-small': { D: 384, depth: 12, heads: 6 },
  'vit-base': { D: 768, depth: 12, heads: 12 },
  'vit-large': { D: 1024, depth: 24, heads: 16 },
} as const;
export type VitSize = keyof typeof MODEL_SIZES;

/**
 * Swin shapes (docs/method.md#swin): the paper's Swin-T/S/B at patch 4, window 7, 224 px, Swin-L at window 14 (official
 * `mim_swin_large_patch4_win14`), and `swin-tiny`, a three-stage model the CPU can train (112 px gives token grids
 * 28/14/7 and the official 7×7 mask grid).
 */
export const SWIN_SIZES = {
  'swin-tiny': { D: 48, depths: [2, 2, 2], heads: [3, 6, 12], imgSize: 112, window: 7 },
  'swin-t': { D: 96, depths: [2, 2, 6, 2], heads: [3, 6, 12, 24], imgSize: 224, window: 7 },
  'swin-s': { D: 96, depths: [2, 2, 18, 2], heads: [3, 6, 12, 24], imgSize: 224, window: 7 },
  'swin-b': { D: 128, depths: [2, 2, 18, 2], heads: [4, 8, 16, 32], imgSize: 224, window: 7 },
  'swin-l': { D: 192, depths: [2, 2, 18, 2], heads: [6, 12, 24, 48], imgSize: 224, window: 14 },
} as const;
export type SwinSize = keyof typeof SWIN_SIZES;
export type ModelSize = VitSize | SwinSize;
export type ModelFamily = 'vit' | 'swin';

export const isSwinSize = (size: string): size is SwinSize => Object.hasOwn(SWIN_SIZES, size);
/** The backbone family of a config: a plain ViT or a hierarchical Swin. */
export const modelFamily = (c: { size: string }): ModelFamily => (isSwinSize(c.size) ? 'swin' : 'vit');

/** Prediction-grid scales relative to the patch grid (docs/method.md#decoders-and-scales): ×4, ×2, ×1, ×0.5. */
export const SCALES = [4, 2, 1, 0.5] as const;
export type Scale = (typeof SCALES)[number];

const int = (min: number) => z.number().int().min(min);

/**
 * Decoder sizes (docs/method.md#decoders-and-scales): LocalMIM's light one per scale (official `MIM_vit_*`: 256-d, one
 * block, 8 heads), MAE's (`mae_vit_base_patch16`: 512-d, 8 blocks, 16 heads), and GreenMIM's on a Swin
 * (`green_mim_swin_*_dec512b1` in its modeling/model_factory.py: 512-d, one block, 16 heads).
 */
export const DECODERS = {
  localmim: { decoderDim: 256, decoderDepth: 1, decoderHeads: 8 },
  /** The official `mim_swin_base_patch4_win7`: 128-d (halved for the first stage), one block, 4 heads. */
  swin: { decoderDim: 128, decoderDepth: 1, decoderHeads: 4 },
  mae: { decoderDim: 512, decoderDepth: 8, decoderHeads: 16 },
  greenmim: { decoderDim: 512, decoderDepth: 1, decoderHeads: 16 },
} as const;

/** Longer than any real schedule; a typo like 1e9 is an error, not a run that never ends. */
export const MAX_EPOCHS = 100_000;

export const ModelConfigBase = z.strictObject({
  size: z.enum([...Object.keys(MODEL_SIZES), ...Object.keys(SWIN_SIZES)] as [ModelSize, ...ModelSize[]]).default('vit-tiny'),
  /** Overrides of the size's encoder width (Swin: the first stage's), depth and heads, for custom models. */
  D: int(4).max(8192).optional(),
  depth: int(1).max(256).optional(),
  heads: int(1).max(256).optional(),
  /** Swin only: overrides of the blocks and heads of each stage (one entry per stage), and the window side. */
  depths: z.array(int(1).max(256)).min(1).max(8).optional(),
  stageHeads: z.array(int(1).max(256)).min(1).max(8).optional(),
  windowSize: int(1).max(64).optional(),
  imgSize: int(8).max(4096).default(224),
  patchSize: int(1).max(256).default(16),
  mlpRatio: z.number().positive().default(4),
  /**
   * `local`: LocalMIM; `global`: every decoder on the last block or stage (MAE/GreenMIM-style with one scale, paper Table
   * 6 with several); `isolated`: gradients stopped after each tap (paper Table 5); `fusion`: one decoder on the taps'
   * features fused onto the last one (paper Table 7, docs/method.md#fusion).
   */
  variant: z.enum(['local', 'global', 'isolated', 'fusion']).default('local'),
  target: z.enum(['hog', 'pixel']).default('hog'),
  /** HOG orientation bins: 9 in the official ViT-B recipe, 18 in the paper and ViT-L. */
  nbins: z.union([z.literal(9), z.literal(18)]).default(9),
  /** Random frozen offsets on the Sobel responses, as the official `--hog_bias` (docs/method.md#hog-bias). */
  hogBias: z.boolean().default(false),
  /** Standardise each pixel-target token by its own mean and unbiased variance (docs/method.md#normalized-pixel-targets). */
  normPix: z.boolean().default(true),
  maskRatio: z.number().gt(0).lt(1).default(0.75),
  /** 0-based blocks (Swin: stages) whose outputs feed the decoders, one per scale; default the distinct ones of [1, 3, depth−3, depth−1], Swin every stage (global: the last for every scale). */
  taps: z.array(int(0)).optional(),
  /** One scale per tap, in any order (paper Table 4f); default [4, 2, 1, 0.5], Swin 1 each (global: [1]). Relative to the patch grid (Swin: the tapped stage's output grid); HOG cell / pixel patch of scale s is p/s. */
  scales: z.array(z.union(SCALES.map((s) => z.literal(s)) as [z.ZodLiteral<Scale>, ...z.ZodLiteral<Scale>[]])).optional(),
  /** Width, heads and blocks of each decoder: LocalMIM's by default (see DECODERS). */
  decoderDim: int(4).max(8192).default(DECODERS.localmim.decoderDim),
  decoderHeads: int(1).max(256).default(DECODERS.localmim.decoderHeads),
  decoderDepth: int(1).max(64).default(DECODERS.localmim.decoderDepth),
});
export type ModelConfig = z.output<typeof ModelConfigBase>;

/** Everything the model needs, derived from a parsed config; never stored. */
export interface ModelDims {
  D: number;
  depth: number;
  heads: number;
  /** Patch size, patch-grid side, patch count. */
  p: number;
  g: number;
  L: number;
  nKeep: number;
  taps: number[];
  scales: Scale[];
  /** HOG cell size or pixel-target patch of each scale, in pixels. */
  cells: number[];
  /** Output features per location of each scale: 3·nbins (HOG) or 3·cell² (pixels). */
  F: number[];
  /** MLP hidden width over block width. */
  mlpRatio: number;
}

export function modelDims(c: ModelConfig): ModelDims {
  if (isSwinSize(c.size)) throw new Error(`${c.size} is a Swin model: its shapes are swinDims(config), not modelDims`);
  const size = MODEL_SIZES[c.size];
  const D = c.D ?? size.D;
  const depth = c.depth ?? size.depth;
  const heads = c.heads ?? size.heads;
  const p = c.patchSize;
  const g = Math.floor(c.imgSize / p);
  const L = g * g;
  let taps: number[];
  let scales: Scale[];
  if (c.variant === 'global') {
    // Every scale decoded from the last block: one decoder (MAE) or several (paper Table 6, global multi-scale).
    scales = c.scales ?? [1];
    taps = c.taps ?? scales.map(() => depth - 1);
  } else {
    // The official rule; shallow models (depth < 7) keep its distinct blocks and the first scales, as the official zip does.
    taps = c.taps ?? [...new Set([1, 3, depth - 3, depth - 1])].filter((t) => t >= 0 && t < depth).sort((a, b) => a - b);
    // Fusion: those blocks fused onto the last one, decoded at one scale.
    scales = c.scales ?? (c.variant === 'fusion' ? [1] : SCALES.slice(0, taps.length));
  }
  const cells = scales.map((s) => p / s);
  const F = cells.map((cell) => (c.target === 'hog' ? 3 * c.nbins : 3 * cell * cell));
  return { D, depth, heads, p, g, L, nKeep: Math.floor(L * (1 - c.maskRatio)), taps, scales, cells, F, mlpRatio: c.mlpRatio };
}

/** Everything a Swin model needs (docs/method.md#swin), derived from a parsed config; never stored. */
export interface SwinDims {
  /** First-stage width, patch size, image side. */
  C: number;
  p: number;
  imgSize: number;
  /** Per stage: width, blocks, heads, token-grid side, window side (min(window, grid) as the official), shift (0 when the window covers the grid). */
  widths: number[];
  depths: number[];
  heads: number[];
  grids: number[];
  windows: number[];
  shifts: number[];
  /** The mask grid (the last stage's token grid), its unit count and how many units one batch masks (`int(ratio·units) + 1`). */
  maskGrid: number;
  units: number;
  nMasked: number;
  /** Per stage, after its patch merging (none after the last): grid side and width of the latent its decoder reads. */
  outGrids: number[];
  outWidths: number[];
  /** Stages whose outputs are normalised and decoded (fusion: fused); per decoder: the stage it reads (fusion: the last tap), its scale relative to that stage's output grid, and its prediction grid side. */
  taps: number[];
  reads: number[];
  scales: Scale[];
  predGrids: number[];
  /** Per decoder: HOG cell or pixel-target patch (the pixels one predicted token covers), and output features per location. */
  cells: number[];
  F: number[];
  /** Per decoder width: the official `decoder_embed_dim // k`, k = 2 for a decoder on the first stage, else 1. */
  decoderDims: number[];
  /** MLP hidden width over block width. */
  mlpRatio: number;
}

export function swinDims(c: ModelConfig): SwinDims {
  if (!isSwinSize(c.size)) throw new Error(`${c.size} is not a Swin model`);
  const size = SWIN_SIZES[c.size];
  const C = c.D ?? size.D;
  const depths = [...(c.depths ?? size.depths)];
  const S = depths.length;
  const heads = [...(c.stageHeads ?? size.heads)];
  const window = c.windowSize ?? size.window;
  const p = c.patchSize;
  const g0 = Math.floor(c.imgSize / p);
  const stages = [...Array(S).keys()];
  const widths = stages.map((i) => C * 2 ** i);
  const grids = stages.map((i) => Math.floor(g0 / 2 ** i));
  const windows = grids.map((g) => Math.min(window, g));
  const shifts = grids.map((g) => (g <= window ? 0 : Math.floor(window / 2)));
  const maskGrid = grids[S - 1]!;
  const units = maskGrid * maskGrid;
  const nMasked = Math.min(units, Math.floor(c.maskRatio * units) + 1);
  const last = (i: number) => i === S - 1;
  const outGrids = stages.map((i) => (last(i) ? grids[i]! : grids[i]! / 2));
  const outWidths = stages.map((i) => (last(i) ? widths[i]! : 2 * widths[i]!));
  // Official: a decoder per stage at the stage's own grid; global: every decoder on the last stage (GreenMIM with one).
  const fusion = c.variant === 'fusion';
  const scales: Scale[] = c.scales ?? (fusion ? [1] : (c.taps ?? (c.variant === 'global' ? [S - 1] : stages)).map(() => 1));
  const taps = c.taps ?? (c.variant === 'global' ? scales.map(() => S - 1) : stages);
  const reads = fusion ? [taps.at(-1)!] : taps;
  const predGrids = reads.map((t, k) => outGrids[t]! * (scales[k] ?? 1));
  const cells = predGrids.map((g) => c.imgSize / g);
  const F = cells.map((cell) => (c.target === 'hog' ? 3 * c.nbins : 3 * cell * cell));
  const decoderDims = reads.map((t) => (t === 0 && S > 1 ? c.decoderDim / 2 : c.decoderDim));
  return {
    C,
    p,
    imgSize: c.imgSize,
    widths,
    depths,
    heads,
    grids,
    windows,
    shifts,
    maskGrid,
    units,
    nMasked,
    outGrids,
    outWidths,
    taps,
    reads,
    scales,
    predGrids,
    cells,
    F,
    decoderDims,
    mlpRatio: c.mlpRatio,
  };
}

/** The Swin-specific checks of a config, as issues on its fields. */
function checkSwin(c: ModelConfig, issue: (path: string, message: string) => void): void {
  const d = swinDims(c);
  const S = d.depths.length;
  if (c.patchSize > c.imgSize || c.imgSize % c.patchSize !== 0)
    return issue('imgSize', `imgSize=${c.imgSize} must be a multiple of patchSize=${c.patchSize}`);
  if (d.heads.length !== S) issue('stageHeads', `${d.heads.length} stage heads for ${S} stages: one per stage`);
  const g0 = c.imgSize / c.patchSize;
  if (g0 % 2 ** (S - 1) !== 0)
    issue('imgSize', `imgSize/patchSize = ${g0} must be divisible by 2^${S - 1}: ${S} stages halve the token grid ${S - 1} times`);
  d.widths.forEach((w, i) => {
    const h = d.heads[i];
    if (h !== undefined && w % h !== 0) issue('stageHeads', `stage ${i} width ${w} must be divisible by its heads=${h}`);
    if (d.grids[i]! % d.windows[i]! !== 0)
      issue('windowSize', `stage ${i}'s token grid ${d.grids[i]} must be a multiple of its window ${d.windows[i]}`);
  });
  if (d.nMasked >= d.units)
    issue('maskRatio', `maskRatio=${c.maskRatio} masks ${d.nMasked} of the ${d.units} mask units: at least one must be visible`);
  checkMlp(c.mlpRatio, [...d.widths, ...d.decoderDims], issue);
  for (const w of new Set(d.decoderDims)) {
    if (w % c.decoderHeads !== 0) issue('decoderHeads', `decoder width ${w} must be divisible by decoderHeads=${c.decoderHeads}`);
    if (w % 4 !== 0) issue('decoderDim', `decoder width ${w} must be a multiple of 4 (2-D sin-cos positions)`);
  }
  for (const k of ['depth', 'heads'] as const)
    if (c[k] !== undefined) issue(k, `a Swin model has stages: use depths and stageHeads, not ${k}`);
  if (c.variant === 'fusion') {
    if (d.scales.length !== 1) return issue('scales', `the fusion variant decodes its fused features at one scale, not ${d.scales.length}`);
    if (d.taps.at(-1) !== S - 1) issue('taps', `the fusion variant fuses onto the last stage: taps must end with ${S - 1}`);
  } else if (d.taps.length !== d.scales.length)
    return issue('taps', `${d.taps.length} taps but ${d.scales.length} scales: one scale per tapped stage`);
  if (c.variant === 'global' && d.taps.some((t) => t !== d.taps[0]))
    issue('taps', `the global variant decodes every scale from one stage, but taps are [${d.taps}]`);
  else if (d.taps.some((t, i) => t >= S || (c.variant !== 'global' && i > 0 && t <= d.taps[i - 1]!)))
    issue('taps', `taps [${d.taps}] must be increasing 0-based stage indices below ${S} stages`);
  d.predGrids.forEach((g, k) => {
    if (!Number.isInteger(g) || g % d.maskGrid !== 0)
      issue(
        'scales',
        `scale ×${d.scales[k]} of stage ${d.reads[k]} predicts a ${g}² grid: it must be a multiple of the ${d.maskGrid}² mask grid`,
      );
  });
}

/** Every block's MLP is `mlpRatio × width` wide: that must be a whole number for each width (encoder and decoders). */
function checkMlp(ratio: number, widths: number[], issue: (path: string, message: string) => void): void {
  const w = widths.find((w) => !Number.isInteger(ratio * w));
  if (w !== undefined)
    issue(
      'mlpRatio',
      `mlpRatio=${ratio} gives a block of width ${w} an MLP ${+(ratio * w).toPrecision(6)} wide: it must be a whole number`,
    );
}

/** The ViT-specific checks, as issues on its fields. */
function checkVit(c: ModelConfig, issue: (path: string, message: string) => void): void {
  for (const k of ['depths', 'stageHeads', 'windowSize'] as const) if (c[k] !== undefined) issue(k, `${k} applies only to Swin models`);
  const d = modelDims(c);
  if (d.D % d.heads !== 0) issue('heads', `encoder width D=${d.D} must be divisible by heads=${d.heads}`);
  if (d.D % 4 !== 0) issue('D', `encoder width D=${d.D} must be a multiple of 4 (2-D sin-cos positions)`);
  checkMlp(c.mlpRatio, [d.D, c.decoderDim], issue);
  if (c.decoderDim % c.decoderHeads !== 0)
    issue('decoderHeads', `decoderDim=${c.decoderDim} must be divisible by decoderHeads=${c.decoderHeads}`);
  if (c.decoderDim % 4 !== 0) issue('decoderDim', `decoderDim=${c.decoderDim} must be a multiple of 4 (sin-cos positions, ×4 head)`);
  if (c.imgSize % d.p !== 0) issue('imgSize', `imgSize=${c.imgSize} must be a multiple of patchSize=${d.p}`);
  if (d.nKeep < 1 || d.nKeep >= d.L)
    issue('maskRatio', `maskRatio=${c.maskRatio} keeps ${d.nKeep} of ${d.L} patches: at least one must be visible and one masked`);
  if (c.variant === 'fusion' && d.scales.length !== 1)
    issue('scales', `the fusion variant decodes its fused features at one scale, not ${d.scales.length}`);
  else if (c.variant !== 'fusion' && d.taps.length !== d.scales.length)
    issue('taps', `${d.taps.length} taps but ${d.scales.length} scales: one scale per tapped block`);
  if (c.variant === 'global' && d.taps.some((t) => t !== d.taps[0]))
    issue('taps', `the global variant decodes every scale from one block, but taps are [${d.taps}]`);
  else if (d.taps.some((t, i) => t >= d.depth || (c.variant !== 'global' && i > 0 && t <= d.taps[i - 1]!)))
    issue('taps', `taps [${d.taps}] must be increasing 0-based block indices below depth=${d.depth}`);
  for (const [k, s] of d.scales.entries()) {
    if (!Number.isInteger(d.cells[k]!) || d.cells[k]! < 1)
      issue('patchSize', `patchSize=${d.p} must be divisible by ${s} for scale ×${s} (cell p/${s})`);
    if (s === 0.5 && d.g % 2 !== 0) issue('imgSize', `scale ×0.5 needs an even patch grid, but imgSize/patchSize = ${d.g}`);
  }
}

export const ModelConfigSchema = ModelConfigBase.superRefine((c, ctx) => {
  const issue = (path: string, message: string) => ctx.addIssue({ code: 'custom', path: [path], message });
  if (c.hogBias && c.target !== 'hog') issue('hogBias', 'hogBias applies only to HOG targets');
  if (modelFamily(c) === 'swin') checkSwin(c, issue);
  else checkVit(c, issue);
});

export const OptimConfigSchema = z.strictObject({
  /** Per-step batch (per process); the effective batch is batch · accumIter. */
  batch: int(1).max(65_536).default(32),
  accumIter: int(1).max(65_536).default(1),
  epochs: int(1).max(MAX_EPOCHS).default(100),
  /** Warmup of the official 100-epoch recipe; 40 for the 1600-epoch ones. */
  warmupEpochs: z.number().min(0).default(10),
  /** Base learning rate: lr = blr · effective batch / 256 (docs/method.md#optimizer-and-schedule). 2e-4 as the ViT-B recipe. */
  blr: z.number().positive().default(2e-4),
  /** Absolute learning rate; overrides blr when given. */
  lr: z.number().positive().optional(),
  minLr: z.number().min(0).default(1e-6),
  weightDecay: z.number().min(0).default(0.05),
  beta1: z.number().min(0).lt(1).default(0.9),
  beta2: z.number().min(0).lt(1).default(0.95),
  eps: z.number().positive().default(1e-8),
});
export type OptimConfig = z.output<typeof OptimConfigSchema>;

export const RunConfigSchema = z.strictObject({
  model: ModelConfigSchema.default(() => ModelConfigSchema.parse({})),
  optim: OptimConfigSchema.default(() => OptimConfigSchema.parse({})),
  seed: int(0).default(0),
});
export type RunConfig = z.output<typeof RunConfigSchema>;
export type RunConfigInput = z.input<typeof RunConfigSchema>;

/**
 * The settings a run may change when it resumes: its schedule — learning rate, its floor, warmup and length —
 * not what its weights, optimizer state or data order depend on (model, batch, accumulation, seed, augmentation).
 */
export const ResumeOverridesSchema = z.strictObject({
  blr: z.number().positive().optional(),
  lr: z.number().positive().optional(),
  minLr: z.number().min(0).optional(),
  warmupEpochs: z.number().min(0).optional(),
  epochs: z.number().int().min(1).max(MAX_EPOCHS).optional(),
});
export type ResumeOverrides = z.output<typeof ResumeOverridesSchema>;
export const peakLr = (o: OptimConfig) => o.lr ?? (o.blr * o.batch * o.accumIter) / 256;

/** Parses a config, turning zod's issues into one error that names each bad field (prefixed by `where`). */
export function parseConfig<S extends z.ZodType>(schema: S, input: unknown, where?: string): z.output<S> {
  const r = schema.safeParse(input);
  if (!r.success) throw new ConfigError(r.error.issues.map(describeIssue), where);
  return r.data;
}

export const parseRunConfig = (input: unknown): RunConfig => parseConfig(RunConfigSchema, input);

/** `optim.epoch: unknown field` rather than zod's "Unrecognized key" at the parent. */
export function describeIssue(i: z.core.$ZodIssue): string {
  const at = (path: PropertyKey[]) => path.map(String).join('.');
  if (i.code === 'unrecognized_keys') return i.keys.map((k) => `${at([...i.path, k])}: unknown field`).join('; ');
  return `${at(i.path) || '(config)'}: ${i.message}`;
}

export class ConfigError extends Error {
  constructor(
    readonly problems: string[],
    where?: string,
  ) {
    super(`${where ? `${where}: ` : ''}invalid config: ${problems.join('; ')}`);
    this.name = 'ConfigError';
  }
}

/**
 * The paper's configurations, as starting points: LocalMIM with HOG or pixels, isolated gradients, the global and
 * fusion comparisons (paper Table 7), each with LocalMIM's decoders; and the MAE baseline, MAE's own model: one
 * decoder of MAE's size on the last block, normalized pixels.
 */
export const PRESETS = {
  'localmim-hog': { variant: 'local', target: 'hog', ...DECODERS.localmim },
  'localmim-pixel': { variant: 'local', target: 'pixel', ...DECODERS.localmim },
  mae: { variant: 'global', target: 'pixel', normPix: true, ...DECODERS.mae },
  isolated: { variant: 'isolated', target: 'hog', ...DECODERS.localmim },
  global: { variant: 'global', target: 'hog', ...DECODERS.localmim },
  fusion: { variant: 'fusion', target: 'hog', ...DECODERS.localmim },
} as const satisfies Record<string, Partial<ModelConfig>>;
export type Preset = keyof typeof PRESETS;

/** The paper's Swin sizes, trained with the official Swin-B recipe on GPU machines (docs/method.md#swin-recipe). */
const isPaperSwin = (size: string) => isSwinSize(size) && size !== 'swin-tiny';

/** What a size or a preset brings to a new run, each section merged over the defaults. */
export interface RunDefaults {
  model: Partial<ModelConfig>;
  optim: Partial<OptimConfig>;
}

/**
 * Defaults a size brings to a new run: for Swin, its image side, patch 4, and the official Swin schedule's base rate
 * and floor (`run_pretrain.py`: blr 1e-4, min lr 0); for Swin-T/S/B also the official Swin-B recipe's length and
 * effective batch (400 epochs, 40 of warmup, 256 × 8 = 2048 images per step), for Swin-L its own (800 epochs, 40 of
 * warmup, 128 × 4 accumulated × 8 GPUs = 4096). ViT-L brings the official ViT-L recipe (ViT/README.md: 800 epochs, 40
 * of warmup, blr 1.5e-4, 128 × 4 accumulated × 8 GPUs = 4096); the other ViTs nothing.
 */
export function sizeDefaults(size: string): RunDefaults {
  if (size === 'vit-large') return { model: {}, optim: { epochs: 800, warmupEpochs: 40, blr: 1.5e-4, batch: 128, accumIter: 32 } };
  if (!isSwinSize(size)) return { model: {}, optim: {} };
  const recipe =
    size === 'swin-l'
      ? { epochs: 800, warmupEpochs: 40, batch: 128, accumIter: 32 }
      : isPaperSwin(size)
        ? { epochs: 400, warmupEpochs: 40, batch: 256, accumIter: 8 }
        : {};
  return { model: { imgSize: SWIN_SIZES[size].imgSize, patchSize: 4 }, optim: { blr: 1e-4, minLr: 0, ...recipe } };
}

/**
 * The baselines' own schedules (docs/method.md#baselines): MAE's (PRETRAIN.md: blr 1.5e-4; main_pretrain.py: min lr
 * 0) on a ViT; GreenMIM's on a Swin (scripts/run_greenmim_swin_base.sh: blr 1.5e-4, 40 warmup epochs;
 * run_greenmim_swin_large_win14.sh: blr 1e-4, 256 × 8 GPUs = 2048 images a step), its length on the paper's sizes only.
 */
function baselineOptim(size: string): Partial<OptimConfig> {
  if (!isSwinSize(size)) return { blr: 1.5e-4, minLr: 0 };
  if (size === 'swin-l') return { blr: 1e-4, warmupEpochs: 40, batch: 256, accumIter: 8 };
  return isPaperSwin(size) ? { blr: 1.5e-4, warmupEpochs: 40 } : { blr: 1.5e-4 };
}

/**
 * A preset's fields for a model size, over the size's defaults: Swin sizes take the official Swin decoders
 * (DECODERS.swin), except `mae`, which on a Swin is GreenMIM's baseline (GreenMIM's decoder on the last stage,
 * normalized pixels); ViT-L and Swin-T/S/B/L with HOG targets the official recipes' 18 bins with the HOG bias; `mae` the
 * baseline's own schedule (baselineOptim).
 */
export function presetFor(preset: Preset, size: string): RunDefaults {
  const fields = PRESETS[preset];
  const optim = preset === 'mae' ? baselineOptim(size) : {};
  const hog = (isPaperSwin(size) || size === 'vit-large') && fields.target === 'hog' ? { nbins: 18 as const, hogBias: true } : {};
  if (!isSwinSize(size)) return { model: { ...fields, ...hog }, optim };
  return { model: { ...fields, ...(preset === 'mae' ? DECODERS.greenmim : DECODERS.swin), ...hog }, optim };
}

/**
 * Where a new run starts in the app and the CLI before any choice is made: a ViT-Tiny at 64 px, patch 8, sized for a
 * CPU and the sample images. The schema's own defaults stay the paper's (224 px, patch 16) for config files.
 */
export const NEW_RUN = { preset: 'localmim-hog', model: { size: 'vit-tiny', imgSize: 64, patchSize: 8 } } as const satisfies {
  preset: Preset;
  model: Partial<ModelConfig>;
};

/** A partial run config, as a file or a form gives it: sections merge field by field. */
export type ConfigLayer = { model?: object; optim?: object } & Record<string, unknown>;

/**
 * A new run's config, parsed once: NEW_RUN, then what the size brings (sizeDefaults), then the preset as it applies to
 * the size (presetFor), then each layer in turn (a config file, flags, a form).
 */
export function newRunConfig(preset: Preset = NEW_RUN.preset, size: string = NEW_RUN.model.size, ...layers: ConfigLayer[]): RunConfig {
  const bySize = sizeDefaults(size);
  const byPreset = presetFor(preset, size);
  const base: ConfigLayer = {
    model: { ...NEW_RUN.model, size, ...bySize.model, ...byPreset.model },
    optim: { ...bySize.optim, ...byPreset.optim },
  };
  const merged = layers.reduce<ConfigLayer>(
    (into, l) => ({ ...into, ...l, model: { ...into.model, ...l.model }, optim: { ...into.optim, ...l.optim } }),
    base,
  );
  return parseRunConfig(merged);
}

/**
 * Fine-tuning and linear probing (docs/method.md#fine-tuning): the official recipe's regularisation and augmentation,
 * with epochs, warmup and batch scaled down to small data. blr, layerDecay and minLr default to the short-pretraining
 * recipe here; a new fine-tune takes those of its source's pretraining length (core/recipe.ts).
 */
const FinetuneFields = OptimConfigSchema.extend({
  epochs: int(1).max(MAX_EPOCHS).default(OFFICIAL_SCHEDULE.epochs),
  warmupEpochs: z.number().min(0).default(OFFICIAL_SCHEDULE.warmupEpochs),
  /** lr = blr · effective batch / 256. */
  blr: z.number().positive().default(SHORT_PRETRAINING.blr),
  minLr: z.number().min(0).default(SHORT_PRETRAINING.minLr),
  beta2: z.number().min(0).lt(1).default(0.999),
  /** Layer-wise lr decay: block i gets layerDecay^(depth − i) of the head's rate. */
  layerDecay: z.number().gt(0).max(1).default(SHORT_PRETRAINING.layerDecay),
  dropPath: z.number().min(0).lt(1).default(SHORT_PRETRAINING.dropPath),
  smoothing: z.number().min(0).lt(1).default(OFFICIAL_AUGMENT.smoothing),
  /** Mixup and CutMix Beta(α, α) parameters, as the paper (0.8, 1.0); 0 turns one off. */
  mixup: z.number().min(0).default(OFFICIAL_AUGMENT.mixup),
  cutmix: z.number().min(0).default(OFFICIAL_AUGMENT.cutmix),
  /** timm's RandAugment string, as the official `--aa`; '' or null = off. */
  randAugment: z
    .string()
    .nullable()
    .default(OFFICIAL_AUGMENT.randAugment)
    .superRefine((s, ctx) => {
      try {
        if (s) parseRandAugment(s);
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: (err as Error).message });
      }
    })
    .transform((s) => s || null),
  /** Random erasing probability (pixel mode, one box), as the official `--reprob`. */
  reprob: z.number().min(0).max(1).default(OFFICIAL_AUGMENT.reprob),
  /** Smallest crop area of RandomResizedCrop during fine-tuning (timm's 0.08). */
  minScale: z.number().gt(0).max(1).default(0.08),
  valFraction: z.number().gt(0).lt(1).default(0.2),
  /** MAE's linear probe (docs/method.md#linear-probe) on the frozen backbone: BatchNorm and a Linear, LARS, crop and flip. */
  linearProbe: z.boolean().default(false),
  /** The recipe these settings came from (core/recipe.ts finetuneDefaults), as `runs show` and the app say. */
  recipe: z.enum(['official', 'small-data']).default('official'),
  /** LP-FT: the head starts as the logistic-regression probe fitted on the training images' head inputs. */
  probeInit: z.boolean().default(false),
  /** End with the baselines on the same split (raw pixels; the same recipe from the initialisation, a second fine-tune once). */
  baselines: z.boolean().default(true),
  /**
   * A linear probe's fit: 'logistic', L2 logistic regression on cached frozen features with λ chosen on a hold-out of
   * the training labels (core/analysis/linear-probe.ts); or 'lars', MAE's recipe (SGD with LARS over epochs).
   */
  probeRecipe: z.enum(['logistic', 'lars']).default('logistic'),
  /** The logistic probe's features: the mean-pooled last block ('last', the head's input) or the last 4 concatenated. */
  probeFeatures: z.enum(['last', 'last4']).default('last'),
}).superRefine((f, ctx) => {
  const issue = (path: string, message: string) => ctx.addIssue({ code: 'custom', path: [path], message });
  if (f.probeFeatures !== 'last' && (!f.linearProbe || f.probeRecipe !== 'logistic'))
    issue('probeFeatures', "features other than 'last' are for the logistic linear probe (linearProbe, probeRecipe 'logistic')");
  if (f.linearProbe && f.probeInit) issue('probeInit', 'a linear probe trains its own head: probeInit applies to fine-tuning only');
  if (!f.linearProbe) return;
  for (const k of ['smoothing', 'mixup', 'cutmix', 'reprob'] as const)
    if (f[k] !== 0) issue(k, `a linear probe trains on crops and flips with plain cross-entropy (MAE's protocol): ${k} must be 0`);
  if (f.randAugment) issue('randAugment', "a linear probe trains on crops and flips only (MAE's protocol): randAugment must be ''");
  if (f.batch < 2) issue('batch', "a linear probe's BatchNorm needs at least 2 images per batch");
});

/**
 * MAE's linear-probe recipe (main_linprobe.py), the defaults of a `linearProbe` run: 90 epochs with 10 of warmup,
 * blr 0.1 decaying to 0, no weight decay, no label smoothing, mixing or augmentation beyond crops and flips; AdamW's
 * betas, layer decay and drop path do not apply.
 */
export const LINEAR_PROBE = {
  epochs: 90,
  warmupEpochs: 10,
  blr: 0.1,
  minLr: 0,
  weightDecay: 0,
  smoothing: 0,
  mixup: 0,
  cutmix: 0,
  randAugment: null,
  reprob: 0,
} as const;

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

export const FinetuneConfigSchema = z.preprocess(
  (v) => (isRecord(v) && v.linearProbe === true ? { ...LINEAR_PROBE, ...v } : v),
  FinetuneFields,
);
export type FinetuneConfig = z.output<typeof FinetuneConfigSchema>;

export const FinetuneRunSchema = z.strictObject({
  model: ModelConfigSchema,
  finetune: FinetuneConfigSchema.default(() => FinetuneConfigSchema.parse({})),
  seed: int(0).default(0),
  /** Class names, in label index order. */
  classes: z.array(z.string()).min(2),
  /** The pretraining run and checkpoint step it starts from; null = from scratch. */
  from: z.strictObject({ runId: int(1), step: int(0) }).nullable(),
});
export type FinetuneRun = z.output<typeof FinetuneRunSchema>;
