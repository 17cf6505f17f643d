import * as tf from '@tensorflow/tfjs';
import type { ModelDims } from '../config.js';
import { gelu, layerNorm, linear, mm, stopGradient } from './ops.js';

export type Param = (name: string) => tf.Tensor;

// Activations stay 2-D, [B·T, W], between blocks so that every Linear is a plain 2-D GEMM.

/** Multi-head self-attention with one fused qkv projection (timm layout, spec §7). x: [B·T, W]. */
export function attention(P: Param, name: string, x: tf.Tensor, B: number, T: number, heads: number): tf.Tensor {
  const W = x.shape[1]!;
  const hd = W / heads;
  const qkv = linear(x, P(`${name}.qkv.weight`), P(`${name}.qkv.bias`)); // [B·T, 3W]
  const split = tf.transpose(tf.reshape(qkv, [B, T, 3, heads, hd]), [2, 0, 3, 1, 4]); // [3, B, H, T, hd]
  const [q, k, v] = tf.split(tf.reshape(split, [3, B * heads, T, hd]), 3, 0).map((t) => tf.reshape(t, [B * heads, T, hd]));
  const scores = mm(tf.mul(q!, hd ** -0.5), tf.transpose(k!, [0, 2, 1])); // [B·H, T, T]
  const out = mm(tf.softmax(scores), v!); // [B·H, T, hd]
  const merged = tf.reshape(tf.transpose(tf.reshape(out, [B, heads, T, hd]), [0, 2, 1, 3]), [B * T, W]);
  return linear(merged, P(`${name}.proj.weight`), P(`${name}.proj.bias`));
}

/** Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)). x: [B·T, W]. */
export function block(P: Param, name: string, x: tf.Tensor, B: number, T: number, heads: number): tf.Tensor {
  const a = attention(P, `${name}.attn`, layerNorm(x, P(`${name}.norm1.weight`), P(`${name}.norm1.bias`)), B, T, heads);
  x = tf.add(x, a);
  const h = gelu(
    linear(layerNorm(x, P(`${name}.norm2.weight`), P(`${name}.norm2.bias`)), P(`${name}.mlp.fc1.weight`), P(`${name}.mlp.fc1.bias`)),
  );
  return tf.add(x, linear(h, P(`${name}.mlp.fc2.weight`), P(`${name}.mlp.fc2.bias`)));
}

/**
 * The encoder on the visible patches (spec §7). `patches [B·nKeep, 3p²]` are flattened `(c, dy, dx)`
 * like the patch conv's weight, `pos [B·nKeep, D]` their fixed positions (gathered on the host, as neither
 * needs a gradient). Returns the normalised output of every tapped block, `[B·(1+nKeep), D]` each.
 * With `isolate`, gradients stop after each tap (paper Table 5).
 */
export function forwardIntermediates(
  P: Param,
  dims: ModelDims,
  patches: tf.Tensor,
  pos: tf.Tensor,
  B: number,
  isolate: boolean,
): tf.Tensor[] {
  const { D, depth, heads, nKeep, taps } = dims;
  const T = 1 + nKeep;
  const Wpe = tf.reshape(P('patch_embed.proj.weight'), [D, -1]); // [D, 3, p, p] -> [D, 3p²]
  const tokens = tf.reshape(tf.add(linear(patches, Wpe, P('patch_embed.proj.bias')), pos), [B, nKeep, D]);
  const cls = tf.tile(P('cls_token'), [B, 1, 1]); // pos[0] is zero
  let x: tf.Tensor = tf.reshape(tf.concat([cls, tokens], 1), [B * T, D]);
  const latents: tf.Tensor[] = [];
  for (let i = 0; i <= taps[taps.length - 1]! && i < depth; i++) {
    x = block(P, `blocks.${i}`, x, B, T, heads);
    const j = taps.indexOf(i);
    if (j < 0) continue;
    latents.push(layerNorm(x, P(`norm.${j}.weight`), P(`norm.${j}.bias`)));
    if (isolate) x = stopGradient(x);
  }
  return latents;
}
