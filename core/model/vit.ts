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
  timmLinear,
  torchConv,
  xavier,
  type Init,
  type Tensors,
  type WeightInit,
} from './module.js';
import { gelu, linear, multiHeadAttention, stopGradient, type AttentionOptions, type Seq } from './ops.js';
import { sinCosPosEmbed } from './posEmbed.js';

// Activations stay 2-D, [B·T, W], between blocks so that every Linear is a plain 2-D GEMM.

/** One fused qkv projection `[3W, W]` (timm layout) and the output projection. */
export const attentionParams = (W: number, init: WeightInit = xavier) => ({
  qkv: linearParams(3 * W, W, init(3 * W, W)),
  proj: linearParams(W, W, init(W, W)),
});
export type AttentionParams = ReturnType<typeof attentionParams>;

/** Multi-head self-attention (docs/method.md#encoder). x: [B·T, W]. */
export function attention(m: Tensors<AttentionParams>, x: tf.Tensor, seq: Seq, o: AttentionOptions): tf.Tensor {
  const qkv = dense(m.qkv, x); // [B·T, 3W]: q, k, v, each head-major
  return dense(m.proj, multiHeadAttention(qkv, seq, o));
}

export const mlpParams = (W: number, hidden: number, init: WeightInit = xavier) => ({
  fc1: linearParams(hidden, W, init(hidden, W)),
  fc2: linearParams(W, hidden, init(W, hidden)),
});
export type MlpParams = ReturnType<typeof mlpParams>;

/** fc2(GELU(fc1(x))). x: [N, W]. */
export const mlp = (m: Tensors<MlpParams>, x: tf.Tensor) => dense(m.fc2, gelu(dense(m.fc1, x)));

export const blockParams = (W: number, mlpRatio: number, init: WeightInit = xavier) => ({
  norm1: normParams(W),
  attn: attentionParams(W, init),
  norm2: normParams(W),
  mlp: mlpParams(W, mlpRatio * W, init),
});
export type BlockParams = ReturnType<typeof blockParams>;

export interface BlockOptions extends AttentionOptions {
  /** Stochastic depth: per-row scale `[B·T, 1]` of each residual branch, 0 (dropped) or 1/(1−rate). */
  keep?: [tf.Tensor, tf.Tensor];
}

/** Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)). x: [B·T, W]. */
export function block(m: Tensors<BlockParams>, x: tf.Tensor, seq: Seq, o: BlockOptions): tf.Tensor {
  const branch = (y: tf.Tensor, i: 0 | 1) => (o.keep ? tf.mul(y, o.keep[i]) : y);
  x = tf.add(x, branch(attention(m.attn, norm(m.norm1, x), seq, o), 0));
  return tf.add(x, branch(mlp(m.mlp, norm(m.norm2, x)), 1));
}

/** The patch conv `[D, 3, p, p]`; its bias keeps PyTorch's default conv init, U(±1/√fan_in). */
export const patchEmbedParams = (D: number, p: number, init: Init = xavier(D, 3 * p * p)) => ({
  proj: { weight: param([D, 3, p, p], init), bias: param([D], torchConv(3 * p * p)) },
});

/** The patch conv as a Linear on flattened patches `[N, 3p²]` (`(c, dy, dx)`, like the conv's weight): `[N, D]`. */
export const embedPatches = (m: Tensors<ReturnType<typeof patchEmbedParams>>, patches: tf.Tensor) =>
  linear(patches, tf.reshape(m.proj.weight, [m.proj.weight.shape[0]!, -1]), m.proj.bias);

/**
 * The ViT encoder's tensors (timm names). In pretraining MAE's init (Xavier Linears and patch conv), a frozen sin-cos
 * `pos_embed` and one LayerNorm `norm.j` per tapped latent. When fine-tuning, timm 0.3.2's ViT as the official
 * fine-tuning builds it from scratch: trunc_normal_(std .02) Linears and positions, PyTorch's default patch conv, and no
 * weight decay on the positions nor on the class token, as the official groups.
 */
export function encoderParams(d: Pick<ModelDims, 'D' | 'depth' | 'p' | 'g' | 'mlpRatio'>, o: { finetune?: boolean; taps?: number } = {}) {
  const { D, g } = d;
  const shape = [1, 1 + g * g, D];
  const k = 3 * d.p * d.p;
  return {
    cls_token: param([1, 1, D], normal(0.02), o.finetune ? false : undefined),
    pos_embed: o.finetune ? param(shape, normal(0.02), false) : buffer(shape, () => sinCosPosEmbed(D, g)),
    patch_embed: patchEmbedParams(D, d.p, o.finetune ? torchConv(k) : xavier(D, k)),
    blocks: range(d.depth, () => blockParams(D, d.mlpRatio, o.finetune ? timmLinear : xavier)),
    norm: range(o.taps ?? 0, () => normParams(D)),
  };
}
export type EncoderParams = ReturnType<typeof encoderParams>;

/** The encoder's input: `patches [B·n, 3p²]` flattened `(c, dy, dx)` like the patch conv's weight, their positions `pos [B·n, D]`. */
export interface EncoderInput {
  B: number;
  patches: tf.Tensor;
  pos: tf.Tensor;
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
}

/**
 * The ViT encoder (docs/method.md#encoder) on `n` patches per image (their positions gathered on the host, as neither
 * needs a gradient). Returns the normalised tapped outputs and each block's output `[B·(1+n), D]` up to the last tap.
 */
export function encode(m: Tensors<EncoderParams>, input: EncoderInput, heads: number, o: EncoderOptions = {}) {
  const { B, patches, pos } = input;
  const D = m.cls_token.shape[2]!;
  const seq = { B, T: 1 + patches.shape[0]! / B };
  const tokens = tf.reshape(tf.add(embedPatches(m.patch_embed, patches), pos), [B, seq.T - 1, D]);
  const cls = tf.tile(m.cls_token, [B, 1, 1]); // pos[0] is zero
  let x: tf.Tensor = tf.reshape(tf.concat([cls, tokens], 1), [B * seq.T, D]);
  const taps = o.taps ?? [];
  const keep = o.dropPath && o.dropPath.rate > 0 ? dropPathKeep(o.dropPath, m.blocks.length, seq) : undefined;
  const blocks: tf.Tensor[] = [];
  const latents: tf.Tensor[] = [];
  for (const [i, blk] of m.blocks.slice(0, taps.length ? taps.at(-1)! + 1 : undefined).entries()) {
    const onProbs = o.onAttention && ((p: tf.Tensor) => o.onAttention!(i, p));
    blocks.push((x = block(blk, x, seq, { heads, keep: keep?.(i), onProbs })));
    // A block may feed several decoders (the global multi-scale variant), each through its own norm; taken here, as the
    // order in which a block's output meets its consumers fixes the order its gradients are summed in.
    taps.forEach((t, j) => t === i && latents.push(norm(m.norm[j]!, x)));
    if (o.isolate && taps.includes(i)) x = stopGradient(x);
  }
  return { latents, blocks };
}

/**
 * Block i's two keep masks (attention and MLP branch) at a rate rising linearly to `rate` over the depth, as timm:
 * per sample, repeated over its T tokens, `[B·T, 1]`.
 */
function dropPathKeep({ rate, rng }: { rate: number; rng: Rng }, depth: number, { B, T }: Seq) {
  const mask = (r: number) => {
    const m = new Float32Array(B * T);
    for (let b = 0; b < B; b++) m.fill(rng.next() < r ? 0 : 1 / (1 - r), b * T, (b + 1) * T);
    return tf.tensor2d(m, [B * T, 1]);
  };
  return (i: number): [tf.Tensor, tf.Tensor] => {
    const r = (rate * i) / Math.max(depth - 1, 1);
    return [mask(r), mask(r)];
  };
}

/** Mean of the patch tokens (class token excluded): the backbone's feature. x: [B·(1+n), D] -> [B, D]. */
export function meanPatchTokens(x: tf.Tensor, B: number): tf.Tensor {
  const D = x.shape[1]!;
  const T = x.shape[0]! / B;
  return tf.mean(tf.slice(tf.reshape(x, [B, T, D]), [0, 1, 0], [B, T - 1, D]), 1);
}
