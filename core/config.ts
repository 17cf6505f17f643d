import { z } from 'zod';

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

export const int = (min: number) => z.number().int().min(min);

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

/** What taps index: a ViT's blocks or a Swin's stages, how many there are, and that bound as messages say it. */
interface TapUnits {
  name: 'block' | 'stage';
  count: number;
  bound: string;
}

type Issue = (path: string, message: string) => void;
type Taps = { taps: number[]; scales: readonly number[] };

/** One scale per tap (fusion: one scale for the fused taps); false when the counts disagree. */
function checkTapCount(variant: ModelConfig['variant'], d: Taps, u: TapUnits, issue: Issue): boolean {
  if (variant === 'fusion' ? d.scales.length === 1 : d.taps.length === d.scales.length) return true;
  if (variant === 'fusion') issue('scales', `the fusion variant decodes its fused features at one scale, not ${d.scales.length}`);
  else issue('taps', `${d.taps.length} taps but ${d.scales.length} scales: one scale per tapped ${u.name}`);
  return false;
}

/** Taps increase and stay below the model's blocks or stages; the global variant reads every scale from one. */
function checkTapOrder(variant: ModelConfig['variant'], d: Taps, u: TapUnits, issue: Issue): void {
  if (variant === 'global' && d.taps.some((t) => t !== d.taps[0]))
    issue('taps', `the global variant decodes every scale from one ${u.name}, but taps are [${d.taps}]`);
  else if (d.taps.some((t, i) => t >= u.count || (variant !== 'global' && i > 0 && t <= d.taps[i - 1]!)))
    issue('taps', `taps [${d.taps}] must be increasing 0-based ${u.name} indices below ${u.bound}`);
}

/** The Swin-specific checks of a config, as issues on its fields. */
function checkSwin(c: ModelConfig, issue: Issue): void {
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
  const stages: TapUnits = { name: 'stage', count: S, bound: `${S} stages` };
  if (!checkTapCount(c.variant, d, stages, issue)) return;
  if (c.variant === 'fusion' && d.taps.at(-1) !== S - 1)
    issue('taps', `the fusion variant fuses onto the last stage: taps must end with ${S - 1}`);
  checkTapOrder(c.variant, d, stages, issue);
  d.predGrids.forEach((g, k) => {
    if (!Number.isInteger(g) || g % d.maskGrid !== 0)
      issue(
        'scales',
        `scale ×${d.scales[k]} of stage ${d.reads[k]} predicts a ${g}² grid: it must be a multiple of the ${d.maskGrid}² mask grid`,
      );
  });
}

/** Every block's MLP is `mlpRatio × width` wide: that must be a whole number for each width (encoder and decoders). */
function checkMlp(ratio: number, widths: number[], issue: Issue): void {
  const w = widths.find((w) => !Number.isInteger(ratio * w));
  if (w !== undefined)
    issue(
      'mlpRatio',
      `mlpRatio=${ratio} gives a block of width ${w} an MLP ${+(ratio * w).toPrecision(6)} wide: it must be a whole number`,
    );
}

/** The ViT-specific checks, as issues on its fields. */
function checkVit(c: ModelConfig, issue: Issue): void {
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
  const blocks: TapUnits = { name: 'block', count: d.depth, bound: `depth=${d.depth}` };
  checkTapCount(c.variant, d, blocks, issue);
  checkTapOrder(c.variant, d, blocks, issue);
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
