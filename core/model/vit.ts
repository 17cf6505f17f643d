import * as tf from '@tensorflow/tfjs';
import type { Rng } from '../random.js';
import { gelu, layerNorm, linear, mm, mmNT, stopGradient } from './ops.js';

export type Param = (name: string) => tf.Tensor;

// Activations stay 2-D, [B·T, W], between blocks so that every Linear is a plain 2-D GEMM.

/**
 * Multi-head self-attention with one fused qkv projection (timm layout, docs/method.md#encoder). x: [B·T, W]. `bias`
 * `[n, heads, T, T]` is added to the scores of sequence b·n + j as its row j (Swin's windows: docs/method.md#swin).
 */
export function attention(
  P: Param,
  name: string,
  x: tf.Tensor,
  B: number,
  T: number,
  heads: number,
  onProbs?: (p: tf.Tensor) => void,
  bias?: tf.Tensor,
): tf.Tensor {
  const W = x.shape[1]!;
  const hd = W / heads;
  // The fused qkv weight [3W, W] is read as three [W, W] blocks: rows [0, W) q, [W, 2W) k, [2W, 3W) v, each head-major.
  const [Wq, Wk, Wv] = tf.split(P(`${name}.qkv.weight`), 3, 0);
  const [bq, bk, bv] = tf.split(P(`${name}.qkv.bias`), 3, 0);
  const perHead = (Wp: tf.Tensor, bp: tf.Tensor) =>
    tf.reshape(tf.transpose(tf.reshape(linear(x, Wp, bp), [B, T, heads, hd]), [0, 2, 1, 3]), [B * heads, T, hd]); // [B·H, T, hd]
  const [q, k, v] = [perHead(Wq!, bq!), perHead(Wk!, bk!), perHead(Wv!, bv!)];
  let scores = mmNT(tf.mul(q!, hd ** -0.5), k!); // [B·H, T, T]
  if (bias)
    scores = tf.reshape(tf.add(tf.reshape(scores, [-1, bias.shape[0]! * heads, T, T]), tf.reshape(bias, [-1, T, T])), [B * heads, T, T]);
  const probs = tf.softmax(scores);
  onProbs?.(probs);
  const out = mm(probs, v!); // [B·H, T, hd]
  const merged = tf.reshape(tf.transpose(tf.reshape(out, [B, heads, T, hd]), [0, 2, 1, 3]), [B * T, W]);
  return linear(merged, P(`${name}.proj.weight`), P(`${name}.proj.bias`));
}

export interface BlockOptions {
  onProbs?: (p: tf.Tensor) => void;
  /** Stochastic depth: per-row scale `[B·T, 1]` of each residual branch, 0 (dropped) or 1/(1−rate). */
  keep?: [tf.Tensor, tf.Tensor];
}

/** Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)). x: [B·T, W]. */
export function block(P: Param, name: string, x: tf.Tensor, B: number, T: number, heads: number, o: BlockOptions = {}): tf.Tensor {
  const branch = (y: tf.Tensor, i: 0 | 1) => (o.keep ? tf.mul(y, o.keep[i]) : y);
  const a = attention(P, `${name}.attn`, layerNorm(x, P(`${name}.norm1.weight`), P(`${name}.norm1.bias`)), B, T, heads, o.onProbs);
  x = tf.add(x, branch(a, 0));
  const h = gelu(
    linear(layerNorm(x, P(`${name}.norm2.weight`), P(`${name}.norm2.bias`)), P(`${name}.mlp.fc1.weight`), P(`${name}.mlp.fc1.bias`)),
  );
  return tf.add(x, branch(linear(h, P(`${name}.mlp.fc2.weight`), P(`${name}.mlp.fc2.bias`)), 1));
}

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
}

/**
 * The ViT encoder (docs/method.md#encoder) on `n` patches per image: `patches [B·n, 3p²]` flattened `(c, dy, dx)` like
 * the patch conv's weight, `pos [B·n, D]` their fixed positions (gathered on the host, as neither needs
 * a gradient). Returns the normalised tapped outputs and the last block's output `x [B·(1+n), D]`.
 */
export function encode(
  P: Param,
  dims: EncoderDims,
  patches: tf.Tensor,
  pos: tf.Tensor,
  B: number,
  o: EncoderOptions = {},
): { latents: tf.Tensor[]; x: tf.Tensor } {
  const { D, depth, heads } = dims;
  const n = patches.shape[0]! / B;
  const T = 1 + n;
  const Wpe = tf.reshape(P('patch_embed.proj.weight'), [D, -1]); // [D, 3, p, p] -> [D, 3p²]
  const tokens = tf.reshape(tf.add(linear(patches, Wpe, P('patch_embed.proj.bias')), pos), [B, n, D]);
  const cls = tf.tile(P('cls_token'), [B, 1, 1]); // pos[0] is zero
  let x: tf.Tensor = tf.reshape(tf.concat([cls, tokens], 1), [B * T, D]);
  const taps = o.taps ?? [];
  const last = taps.length ? taps[taps.length - 1]! : depth - 1;
  const latents: tf.Tensor[] = [];
  for (let i = 0; i <= last; i++) {
    const keep =
      o.dropPath && o.dropPath.rate > 0 ? keepMasks(o.dropPath, (o.dropPath.rate * i) / Math.max(depth - 1, 1), B, T) : undefined;
    x = block(P, `blocks.${i}`, x, B, T, heads, { keep, onProbs: o.onAttention && ((p) => o.onAttention!(i, p)) });
    if (!taps.includes(i)) continue;
    // A block may feed several decoders (the global multi-scale variant), each through its own norm.
    for (const [j, t] of taps.entries()) if (t === i) latents.push(layerNorm(x, P(`norm.${j}.weight`), P(`norm.${j}.bias`)));
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
