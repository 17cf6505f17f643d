import * as tf from '@tensorflow/tfjs';
import type { SwinDims } from '../config.js';
import type { Rng } from '../random.js';
import { tokens } from '../image.js';
import {
  dense,
  linearParams,
  norm,
  normal,
  normParams,
  param,
  range,
  timmLinear,
  torchConv,
  xavier,
  type Tensors,
  type WeightInit,
} from './module.js';
import { customGrad, mm, stopGradient } from './ops.js';
import type { GroupPlan, SwinPlan } from './swin-windows.js';
import { attention, attentionParams, embedPatches, mlp, mlpParams, patchEmbedParams } from './vit.js';

// The Swin encoder of the official pretraining model (docs/method.md#swin) on any set of visible mask units, all of
// them included. Tokens are kept mask-unit-major, as the official code orders them: the visible units of the
// `maskGrid × maskGrid` mask grid in raster order, each unit's `r × r` tokens in raster order within it. Which tokens
// attend to which (windows, shifted windows, padding into groups) is index bookkeeping done on the host from the mask
// (swin-windows.ts), as the official `GroupingModule` does; the device sees gathers with known inverses and one-hot matmuls.

/** How a stage's 2×2 neighbours are concatenated before the reduction: (dh, dw) order as the official pretraining, or timm's x0..x3 = (0,0), (1,0), (0,1), (1,1). */
export type MergeOrder = 'pretrain' | 'timm';

/** A grouping on the device: the gathers, the window-position one-hots and the additive mask. */
export interface GroupTensors {
  plan: GroupPlan;
  window: number;
  /** The window side's relative-position one-hot (the plan's, shared). */
  relIndex: tf.Tensor2D;
  /** Grouping mode: slot → token (N = zero row) and token → slot; masking mode: null. */
  order: tf.Tensor1D | null;
  slots: tf.Tensor1D | null;
  /** One-hot window positions `[nG·GS, w²]` and their transpose per group `[nG, w², GS]` (padding rows zero). */
  E: tf.Tensor2D;
  Et: tf.Tensor3D;
  /** `[nG, 1, GS, GS]`: 1 where two slots share a window, and the official −100 elsewhere (0 within). */
  same: tf.Tensor4D;
  minus: tf.Tensor4D;
}

export interface StageTensors {
  plain: GroupTensors;
  shifted: GroupTensors | null;
}

/** A plan's device tensors: per stage its groupings, per stage output its restore gather, per window side its bias-table one-hot. */
export interface SwinPlanTensors {
  dims: SwinDims;
  plan: SwinPlan;
  stages: StageTensors[];
  restore: { order: tf.Tensor1D; slots: tf.Tensor1D }[];
  /** Per window side w: one-hot `[w⁴, (2w−1)²]` of the standard relative position index. */
  relIndex: Map<number, tf.Tensor2D>;
}

export function planTensors(d: SwinDims, plan: SwinPlan): SwinPlanTensors {
  // Every tensor is kept: a caller's tidy must not take them; disposePlanTensors frees them.
  const relIndex = new Map<number, tf.Tensor2D>();
  for (const w of new Set(d.windows)) relIndex.set(w, tf.keep(relativeIndexOneHot(w)));
  const group = (g: GroupPlan, w: number, N: number): GroupTensors => {
    const { nG, GS } = g;
    const E = new Float32Array(nG * GS * w * w);
    const Et = new Float32Array(nG * w * w * GS);
    g.local.forEach((l, s) => {
      if (l < 0) return;
      E[s * w * w + l] = 1;
      Et[(Math.floor(s / GS) * w * w + l) * GS + (s % GS)] = 1;
    });
    const same = new Float32Array(nG * GS * GS);
    const minus = new Float32Array(nG * GS * GS);
    for (let j = 0; j < nG; j++)
      for (let a = 0; a < GS; a++)
        for (let b = 0; b < GS; b++) {
          const [ga, gb] = [g.groupId[j * GS + a]!, g.groupId[j * GS + b]!];
          const within = ga === gb && ga !== -1;
          same[(j * GS + a) * GS + b] = within ? 1 : 0;
          minus[(j * GS + a) * GS + b] = within ? 0 : -100;
        }
    return {
      plan: g,
      window: w,
      relIndex: relIndex.get(w)!,
      order: g.order
        ? tf.keep(
            tf.tensor1d(
              g.order.map((n) => (n < 0 ? N : n)),
              'int32',
            ),
          )
        : null,
      slots: g.slots ? tf.keep(tf.tensor1d(g.slots, 'int32')) : null,
      E: tf.keep(tf.tensor2d(E, [nG * GS, w * w])),
      Et: tf.keep(tf.tensor3d(Et, [nG, w * w, GS])),
      same: tf.keep(tf.tensor4d(same, [nG, 1, GS, GS])),
      minus: tf.keep(tf.tensor4d(minus, [nG, 1, GS, GS])),
    };
  };
  const stages = plan.stages.map((s, i) => ({
    plain: group(s.plain, d.windows[i]!, s.N),
    shifted: s.shifted ? group(s.shifted, d.windows[i]!, s.N) : null,
  }));
  const restore = plan.restore.map((r) => {
    const n = Math.max(-1, ...r) + 1;
    const slots = new Int32Array(n);
    r.forEach((k, p) => k >= 0 && (slots[k] = p));
    return {
      order: tf.keep(
        tf.tensor1d(
          r.map((k) => (k < 0 ? n : k)),
          'int32',
        ),
      ),
      slots: tf.keep(tf.tensor1d(slots, 'int32')),
    };
  });
  return { dims: d, plan, stages, restore, relIndex };
}

export function disposePlanTensors(t: SwinPlanTensors): void {
  const groups = t.stages.flatMap((s) => (s.shifted ? [s.plain, s.shifted] : [s.plain]));
  tf.dispose([
    ...groups.flatMap((g) => [g.E, g.Et, g.same, g.minus, ...(g.order ? [g.order, g.slots!] : [])]),
    ...t.restore.flatMap((r) => [r.order, r.slots]),
    ...t.relIndex.values(),
  ]);
}

/** One-hot `[w⁴, (2w−1)²]`: row (i, j) of a w×w window's token pair picks `(Δy + w − 1)·(2w − 1) + Δx + w − 1`. */
function relativeIndexOneHot(w: number): tf.Tensor2D {
  const T = (2 * w - 1) ** 2;
  const out = new Float32Array(w ** 4 * T);
  for (let i = 0; i < w * w; i++)
    for (let j = 0; j < w * w; j++) {
      const dy = Math.floor(i / w) - Math.floor(j / w);
      const dx = (i % w) - (j % w);
      out[(i * w * w + j) * T + (dy + w - 1) * (2 * w - 1) + dx + w - 1] = 1;
    }
  return tf.tensor2d(out, [w ** 4, T]);
}

/**
 * `x [B, N, C]` gathered along tokens by `order` (an index of N reads a zero row), where each source token lands in at
 * most one place: its gradient is the gather back by `slots`, which tfjs's wasm backend lacks for plain gathers.
 */
export function gatherTokens(x: tf.Tensor, order: tf.Tensor1D, slots: tf.Tensor1D): tf.Tensor {
  const f = (xs: tf.Tensor) => ({
    value: tf.gather(padZero(xs), order, 1),
    gradFunc: (dy: tf.Tensor) => tf.gather(padZero(dy), slots, 1),
  });
  const op = customGrad(f) as (x: tf.Tensor) => tf.Tensor;
  return op(x);
}

const padZero = (x: tf.Tensor) => tf.concat([x, tf.zeros([x.shape[0]!, 1, x.shape[2]!])], 1);

/**
 * The relative position bias of a grouping, `[nG, heads, GS, GS]`, masked as the official code (zero across windows,
 * −100 added): the table gathered into a window's full `[w², w², heads]` bias by a one-hot matmul, then each group's
 * pairs picked as `E · bias_h · Eᵀ`.
 */
export function relativeBias(table: tf.Tensor, g: GroupTensors): tf.Tensor {
  const { nG, GS } = g.plan;
  const w2 = g.window ** 2;
  const heads = table.shape[1]!;
  const full = tf.reshape(mm(g.relIndex, table), [w2, w2 * heads]); // [(i), (j, h)]
  const left = tf.reshape(mm(g.E, full), [nG, GS, w2, heads]); // [g, a, j, h]
  const picked = mm(tf.reshape(tf.transpose(left, [0, 3, 1, 2]), [nG, heads * GS, w2]), g.Et); // [g, (h, a), b]
  return tf.add(tf.mul(tf.reshape(picked, [nG, heads, GS, GS]), g.same), g.minus);
}

export interface SwinBlockOptions {
  heads: number;
  onProbs?: (p: tf.Tensor) => void;
  /** Stochastic depth: per-sample scale `[B, 1, 1]` of each residual branch, 0 (dropped) or 1/(1−rate). */
  keep?: [tf.Tensor, tf.Tensor];
  /** LayerNorm eps before the MLP: 1e-6 (`norm_layer`) in pretraining; the official fine-tuning model's is PyTorch's 1e-5. */
  norm2Eps?: number;
}

/** Block j of stage i's tensors: timm's, with the relative position bias table `[(2w−1)², heads]` first in its attention. */
export function swinBlockParams(d: SwinDims, i: number, o: SwinInit) {
  const [W, w] = [d.widths[i]!, d.windows[i]!];
  return {
    norm1: normParams(W),
    attn: {
      relative_position_bias_table: param([(2 * w - 1) ** 2, d.heads[i]!], normal(0.02), o.tableDecay),
      ...attentionParams(W, o.linear),
    },
    norm2: normParams(W),
    mlp: mlpParams(W, d.mlpRatio * W, o.linear),
  };
}
export type SwinBlockParams = ReturnType<typeof swinBlockParams>;

/** A Swin block on `x [B, N, C]`: windowed attention with relative position bias within `g`'s groups, then the MLP. */
export function swinBlock(m: Tensors<SwinBlockParams>, x: tf.Tensor, g: GroupTensors, o: SwinBlockOptions): tf.Tensor {
  const [B, N, C] = x.shape as [number, number, number];
  const { nG, GS } = g.plan;
  const branch = (y: tf.Tensor, i: 0 | 1) => (o.keep ? tf.mul(y, o.keep[i]) : y);
  // LayerNorm is per token, so it commutes with the grouping gather; padding slots are zero rows, masked out.
  let h = norm(m.norm1, x);
  if (g.order) h = gatherTokens(h, g.order, g.slots!);
  const bias = relativeBias(m.attn.relative_position_bias_table, g);
  let a = attention(m.attn, tf.reshape(h, [B * nG * GS, C]), { B: B * nG, T: GS }, { heads: o.heads, onProbs: o.onProbs, bias });
  a = tf.reshape(a, [B, nG * GS, C]);
  if (g.order) a = gatherTokens(a, g.slots!, g.order);
  x = tf.add(x, branch(a, 0));
  const rows = tf.reshape(norm(m.norm2, x, o.norm2Eps), [B * N, C]);
  return tf.add(x, branch(tf.reshape(mlp(m.mlp, rows), [B, N, C]), 1));
}

/** Patch merging's tensors: LayerNorm over the 4C concatenated neighbours, then the reduction `[2C, 4C]` without bias. */
export const patchMergingParams = (C: number, init: WeightInit) => ({
  reduction: linearParams(2 * C, 4 * C, init(2 * C, 4 * C), false),
  norm: normParams(4 * C),
});

/**
 * Patch merging on `x [B, N, C]` whose tokens come in mask units of `r × r` (raster within): each 2×2 neighbourhood
 * concatenated in `order`, then LayerNorm and the reduction: `[B, N/4, 2C]`, units of `r/2 × r/2`.
 */
export function patchMerging(m: Tensors<ReturnType<typeof patchMergingParams>>, x: tf.Tensor, r: number, order: MergeOrder): tf.Tensor {
  const [B, N, C] = x.shape as [number, number, number];
  const h = r / 2;
  const grid = tf.reshape(x, [(B * N) / (r * 2), 2, h, 2, C]); // [(b, unit, h2), dh, w2, dw, C]
  const merged = tf.transpose(grid, order === 'pretrain' ? [0, 2, 1, 3, 4] : [0, 2, 3, 1, 4]); // [.., w2, (dh, dw) or (dw, dh), C]
  const y = norm(m.norm, tf.reshape(merged, [(B * N) / 4, 4 * C]));
  return tf.reshape(dense(m.reduction, y), [B, N / 4, 2 * C]);
}

/** How a Swin backbone initialises its Linears, and whether its bias tables decay. */
interface SwinInit {
  linear: WeightInit;
  tableDecay: boolean;
}

/**
 * The Swin backbone's tensors (timm's names; the patch merging at the end of stage i is `layers.i.downsample`). The
 * pretraining model's init is the official one: Xavier Linears and patch conv, N(0, .02) bias tables, which its groups do
 * not decay. The fine-tuning model's (`models_swin.py`): timm's trunc_normal_(std .02) Linears, PyTorch's default patch
 * conv, decayed bias tables.
 */
export function swinBackboneParams(d: SwinDims, finetune = false) {
  const o: SwinInit = { linear: finetune ? timmLinear : xavier, tableDecay: finetune };
  const k = 3 * d.p * d.p;
  return {
    patch_embed: { ...patchEmbedParams(d.C, d.p, finetune ? torchConv(k) : xavier(d.C, k)), norm: normParams(d.C) },
    layers: d.widths.map((W, i) => ({
      blocks: range(d.depths[i]!, () => swinBlockParams(d, i, o)),
      downsample: i < d.widths.length - 1 ? patchMergingParams(W, o.linear) : undefined,
    })),
  };
}
export type SwinBackboneParams = ReturnType<typeof swinBackboneParams>;

/**
 * Patches of normalised images `[B, H, W, 3]` for the visible units of a plan, mask-unit-major, flattened `(c, dy, dx)`
 * like the patch conv's weight: `[B, N0, 3p²]`. No gradient needed.
 */
export function unitPatches(x: tf.Tensor4D, d: SwinDims, units: Int32Array): tf.Tensor3D {
  return tf.tidy(() => {
    const { p } = d;
    const [B] = x.shape;
    const g = d.grids[0]!;
    const r = g / d.maskGrid;
    const t = tokens(x, p); // [B, g², (dy, dx, c)]
    const rows = tf.reshape(tf.transpose(tf.reshape(t, [B, g * g, p * p, 3]), [0, 1, 3, 2]), [B, g * g, 3 * p * p]);
    const ids = new Int32Array(units.length * r * r);
    units.forEach((u, k) => {
      for (let q = 0; q < r * r; q++)
        ids[k * r * r + q] = (Math.floor(u / d.maskGrid) * r + Math.floor(q / r)) * g + (u % d.maskGrid) * r + (q % r);
    });
    return tf.gather(rows, tf.tensor1d(ids, 'int32'), 1) as tf.Tensor3D;
  });
}

export interface SwinEncoderOptions {
  merge?: MergeOrder;
  /** Receives each block's attention probabilities `[B·nG·heads, GS, GS]` with its grouping. */
  onAttention?: (stage: number, block: number, probs: tf.Tensor, g: GroupPlan) => void;
  /** Stochastic depth with a rate rising linearly to `rate` over all blocks, as timm. */
  dropPath?: { rate: number; rng: Rng };
  norm2Eps?: number;
  /** Stages after whose output the gradients stop (paper Table 5). */
  isolate?: readonly number[];
}

/**
 * The Swin encoder (docs/method.md#swin) on the visible tokens of a plan: `patches [B, N0, 3p²]` (see `unitPatches`)
 * embedded and normalised, then each stage's blocks (unshifted, shifted, …) and its patch merging. Returns each stage's
 * output after its merging, `[B, N_i, C_i]`, unnormalised (the last stage's is the last block's).
 */
export function swinEncode(
  m: Tensors<SwinBackboneParams>,
  patches: tf.Tensor,
  t: SwinPlanTensors,
  o: SwinEncoderOptions = {},
): tf.Tensor[] {
  const d = t.dims;
  const [B, N0] = patches.shape as [number, number, number];
  const x0 = embedPatches(m.patch_embed, tf.reshape(patches, [B * N0, -1]));
  let x = tf.reshape(norm(m.patch_embed.norm, x0), [B, N0, d.C]);
  const keep = o.dropPath && dropPathKeep(o.dropPath, d.depths, B);
  return m.layers.map((layer, i) => {
    const s = t.stages[i]!;
    layer.blocks.forEach((blk, j) => {
      const g = j % 2 === 1 && s.shifted ? s.shifted : s.plain;
      const onProbs = o.onAttention && ((p: tf.Tensor) => o.onAttention!(i, j, p, g.plan));
      x = swinBlock(blk, x, g, { heads: d.heads[i]!, keep: keep?.(i, j), onProbs, norm2Eps: o.norm2Eps });
    });
    if (layer.downsample) x = patchMerging(layer.downsample, x, d.grids[i]! / d.maskGrid, o.merge ?? 'pretrain');
    const out = x;
    if (o.isolate?.includes(i)) x = stopGradient(x);
    return out;
  });
}

/**
 * Block j of stage i's two keep masks `[B, 1, 1]` (attention and MLP branch), per sample, at a rate rising linearly
 * to `rate` over all blocks, as timm; none at rate 0.
 */
function dropPathKeep({ rate, rng }: { rate: number; rng: Rng }, depths: readonly number[], B: number) {
  const total = depths.reduce((a, b) => a + b, 0);
  const mask = (r: number) =>
    tf.tensor3d(
      Float32Array.from({ length: B }, () => (rng.next() < r ? 0 : 1 / (1 - r))),
      [B, 1, 1],
    );
  return (i: number, j: number): [tf.Tensor, tf.Tensor] | undefined => {
    const r = (rate * (depths.slice(0, i).reduce((a, b) => a + b, 0) + j)) / Math.max(total - 1, 1);
    return r > 0 ? [mask(r), mask(r)] : undefined;
  };
}
