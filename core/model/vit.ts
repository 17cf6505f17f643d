import * as tf from '@tensorflow/tfjs';
import type { ModelDims } from '../config.js';
import type { Rng } from '../random.js';
import {
  buffer,
  dense,
  linearParams,
  norm,
  normal,
  normParams,
  param,
  range,
  uniform,
  xavier,
  type Init,
  type Param,
  type WeightInit,
} from './module.js';
import { gelu, linear, multiHeadAttention, stopGradient } from './ops.js';
import { sinCosPosEmbed } from './posEmbed.js';

// Activations stay 2-D, [B·T, W], between blocks so that every Linear is a plain 2-D GEMM.

/** One fused qkv projection `[3W, W]` (timm layout) and the output projection. */
export const attentionParams = (W: number, init: WeightInit = xavier) => ({
  qkv: linearParams(3 * W, W, init(3 * W, W)),
  proj: linearParams(W, W, init(W, W)),
});
export type AttentionParams = ReturnType<typeof attentionParams>;

/**
 * Multi-head self-attention (docs/method.md#encoder). x: [B·T, W]. `bias` `[n, heads, T, T]` is added to the scores of
 * sequence b as its row b mod n (Swin's windows).
 */
export function attention(
  P: Param,
  m: AttentionParams,
  x: tf.Tensor,
  B: number,
  T: number,
  heads: number,
  onProbs?: (p: tf.Tensor) => void,
  bias?: tf.Tensor,
): tf.Tensor {
  const qkv = dense(P, m.qkv, x); // [B·T, 3W]: q, k, v, each head-major
  return dense(P, m.proj, multiHeadAttention(qkv, B, T, heads, onProbs, bias));
}

export const mlpParams = (W: number, hidden: number, init: WeightInit = xavier) => ({
  fc1: linearParams(hidden, W, init(hidden, W)),
  fc2: linearParams(W, hidden, init(W, hidden)),
});
export type MlpParams = ReturnType<typeof mlpParams>;

/** fc2(GELU(fc1(x))). x: [N, W]. */
export const mlp = (P: Param, m: MlpParams, x: tf.Tensor) => dense(P, m.fc2, gelu(dense(P, m.fc1, x)));

export const blockParams = (W: number, mlpRatio: number) => ({
  norm1: normParams(W),
  attn: attentionParams(W),
  norm2: normParams(W),
  mlp: mlpParams(W, mlpRatio * W),
});
export type BlockParams = ReturnType<typeof blockParams>;

export interface BlockOptions {
  onProbs?: (p: tf.Tensor) => void;
  /** Stochastic depth: per-row scale `[B·T, 1]` of each residual branch, 0 (dropped) or 1/(1−rate). */
  keep?: [tf.Tensor, tf.Tensor];
}

/** Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)). x: [B·T, W]. */
export function block(P: Param, m: BlockParams, x: tf.Tensor, B: number, T: number, heads: number, o: BlockOptions = {}): tf.Tensor {
  const branch = (y: tf.Tensor, i: 0 | 1) => (o.keep ? tf.mul(y, o.keep[i]) : y);
  x = tf.add(x, branch(attention(P, m.attn, norm(P, m.norm1, x), B, T, heads, o.onProbs), 0));
  return tf.add(x, branch(mlp(P, m.mlp, norm(P, m.norm2, x)), 1));
}

/** The patch conv `[D, 3, p, p]`; its bias keeps PyTorch's default conv init, U(±1/√fan_in). */
export const patchEmbedParams = (D: number, p: number, init: Init = xavier(D, 3 * p * p)) => ({
  proj: { weight: param([D, 3, p, p], init), bias: param([D], uniform(1 / Math.sqrt(3 * p * p))) },
});

/** The patch conv as a Linear on flattened patches `[N, 3p²]` (`(c, dy, dx)`, like the conv's weight): `[N, D]`. */
export const embedPatches = (P: Param, m: ReturnType<typeof patchEmbedParams>, patches: tf.Tensor) =>
  linear(patches, tf.reshape(P(m.proj.weight.name), [m.proj.weight.shape[0]!, -1]), P(m.proj.bias.name));

/**
 * The ViT encoder's tensors (timm names): in pretraining a frozen sin-cos `pos_embed` and one LayerNorm `norm.j` per
 * tapped latent; when fine-tuning, trained positions (timm's trunc_normal_ std .02 from scratch) and no weight decay on
 * them nor on the class token, as the official groups.
 */
export function encoderParams(d: Pick<ModelDims, 'D' | 'depth' | 'p' | 'g' | 'mlpRatio'>, o: { finetune?: boolean; taps?: number } = {}) {
  const { D, g } = d;
  const shape = [1, 1 + g * g, D];
  return {
    cls_token: param([1, 1, D], normal(0.02), o.finetune ? false : undefined),
    pos_embed: o.finetune ? param(shape, normal(0.02), false) : buffer(shape, () => sinCosPosEmbed(D, g)),
    patch_embed: patchEmbedParams(D, d.p),
    blocks: range(d.depth, () => blockParams(D, d.mlpRatio)),
    norm: range(o.taps ?? 0, () => normParams(D)),
  };
}
export type EncoderParams = ReturnType<typeof encoderParams>;

export interface EncoderDims {
  D: number;
  depth: number;
  heads: number;
}

export interface EncoderOptions {
  /** Blocks (0-based, non-decreasing) whose output, through its own LayerNorm `norm.j`, is returned; the run stops at the last. */
  taps?: readonly number[];
  /** Stop gradients after each tap (paper Table 5). */
  isolate?: boolean;
  /** Receives each block's attention probabilities `[B·H, T, T]`. */
  onAttention?: (block: number, probs: tf.Tensor) => void;
  /** Stochastic depth with a rate rising linearly to `rate` over the blocks, as timm. */
  dropPath?: { rate: number; rng: Rng };
  /** Receives each block's output `[B·T, D]` (the linear probe's last-4-blocks features). */
  onBlock?: (block: number, x: tf.Tensor) => void;
}

/**
 * The ViT encoder (docs/method.md#encoder) on `n` patches per image: `patches [B·n, 3p²]` flattened `(c, dy, dx)` like
 * the patch conv's weight, `pos [B·n, D]` their fixed positions (gathered on the host, as neither needs
 * a gradient). Returns the normalised tapped outputs and the last block's output `x [B·(1+n), D]`.
 */
export function encode(
  P: Param,
  m: EncoderParams,
  dims: EncoderDims,
  patches: tf.Tensor,
  pos: tf.Tensor,
  B: number,
  o: EncoderOptions = {},
): { latents: tf.Tensor[]; x: tf.Tensor } {
  const { D, depth, heads } = dims;
  const n = patches.shape[0]! / B;
  const T = 1 + n;
  const tokens = tf.reshape(tf.add(embedPatches(P, m.patch_embed, patches), pos), [B, n, D]);
  const cls = tf.tile(P(m.cls_token.name), [B, 1, 1]); // pos[0] is zero
  let x: tf.Tensor = tf.reshape(tf.concat([cls, tokens], 1), [B * T, D]);
  const taps = o.taps ?? [];
  const last = taps.length ? taps[taps.length - 1]! : depth - 1;
  const latents: tf.Tensor[] = [];
  for (let i = 0; i <= last; i++) {
    const keep =
      o.dropPath && o.dropPath.rate > 0 ? keepMasks(o.dropPath, (o.dropPath.rate * i) / Math.max(depth - 1, 1), B, T) : undefined;
    x = block(P, m.blocks[i]!, x, B, T, heads, { keep, onProbs: o.onAttention && ((p) => o.onAttention!(i, p)) });
    o.onBlock?.(i, x);
    if (!taps.includes(i)) continue;
    // A block may feed several decoders (the global multi-scale variant), each through its own norm.
    for (const [j, t] of taps.entries()) if (t === i) latents.push(norm(P, m.norm[j]!, x));
    if (o.isolate) x = stopGradient(x);
  }
  return { latents, x };
}

/** Two per-sample keep masks (attention and MLP branch), repeated over the sample's T tokens: `[B·T, 1]`. */
function keepMasks({ rng }: { rng: Rng }, rate: number, B: number, T: number): [tf.Tensor, tf.Tensor] {
  const mask = () => {
    const m = new Float32Array(B * T);
    for (let b = 0; b < B; b++) m.fill(rng.next() < rate ? 0 : 1 / (1 - rate), b * T, (b + 1) * T);
    return tf.tensor2d(m, [B * T, 1]);
  };
  return [mask(), mask()];
}

/** Mean of the patch tokens (class token excluded): the backbone's feature. x: [B·(1+n), D] -> [B, D]. */
export function meanPatchTokens(x: tf.Tensor, B: number): tf.Tensor {
  const D = x.shape[1]!;
  const T = x.shape[0]! / B;
  return tf.mean(tf.slice(tf.reshape(x, [B, T, D]), [0, 1, 0], [B, T - 1, D]), 1);
}
