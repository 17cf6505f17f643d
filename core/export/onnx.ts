import { modelDims, modelFamily, swinDims } from '../config.js';
import { swinClassifierParams, vitClassifierParams } from '../model/classifier.js';
import type { LinearParams, NormParams, ParamSpec } from '../model/module.js';
import type { SwinBlockParams } from '../model/swin.js';
import type { AttentionParams, MlpParams } from '../model/vit.js';
import type { Backbone } from './backbone.js';
import { Message } from './protobuf.js';

// Field numbers are onnx/onnx.proto's. Opset 17 is the first with LayerNormalization; its GELU is written with Erf
// (the Gelu op is opset 20). IR version 8 is the one that goes with opset 17.
const OPSET = 17;
const IR_VERSION = 8;
const FLOAT = 1; // TensorProto.DataType
const INT64 = 7;

/** An attribute: an int, a list of ints, or a float. */
type Attr = number | number[] | { float: number };

function attribute(name: string, a: Attr): Message {
  const m = new Message().string(1, name);
  if (Array.isArray(a)) {
    for (const v of a) m.int(8, v);
    return m.int(20, 7); // INTS
  }
  return typeof a === 'number' ? m.int(3, a).int(20, 2) : m.float(2, a.float).int(20, 1); // INT, FLOAT
}

/** A float32 value `[dims]`; a string dim is symbolic (the batch). */
function valueInfo(name: string, dims: (number | string)[]): Message {
  const shape = new Message();
  for (const d of dims) shape.message(1, typeof d === 'string' ? new Message().string(2, d) : new Message().int(1, d));
  const tensor = new Message().int(1, FLOAT).message(2, shape);
  return new Message().string(1, name).message(2, new Message().message(1, tensor));
}

/** A graph being built in topological order: nodes, initializers, and the values they name. */
class Graph {
  readonly nodes: Message[] = [];
  readonly initializers: Message[] = [];
  private readonly constants = new Map<string, string>();
  private readonly named = new Set<string>();
  private count = 0;

  /** A float32 initializer (little-endian raw data), once per name. */
  tensor(name: string, values: Float32Array, dims: readonly number[]): string {
    if (this.named.has(name)) return name;
    this.named.add(name);
    const raw = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
    const t = new Message();
    for (const d of dims) t.int(1, d);
    this.initializers.push(t.int(2, FLOAT).string(8, name).bytes(9, raw));
    return name;
  }

  /** A shared int64 constant (shapes, axes, indices); `dims` `[]` makes a scalar. */
  ints(values: number[], dims = [values.length]): string {
    return this.constant(`i64[${dims}]:${values}`, (name) => {
      const t = new Message();
      for (const d of dims) t.int(1, d);
      const raw = new Uint8Array(BigInt64Array.from(values, BigInt).buffer);
      this.initializers.push(t.int(2, INT64).string(8, name).bytes(9, raw));
    });
  }

  /** A shared float32 scalar. */
  scalar(v: number): string {
    return this.constant(`f32:${v}`, (name) => this.tensor(name, Float32Array.of(v), []));
  }

  private constant(key: string, make: (name: string) => void): string {
    let name = this.constants.get(key);
    if (!name) {
      name = `const_${this.count++}`;
      make(name);
      this.constants.set(key, name);
    }
    return name;
  }

  /** One node; returns its output's name (`output`, or a fresh one). */
  op(type: string, inputs: string[], attrs: Record<string, Attr> = {}, output = `${type}_${this.count++}`): string {
    const n = new Message();
    for (const i of inputs) n.string(1, i);
    n.string(2, output).string(3, output).string(4, type);
    for (const [k, a] of Object.entries(attrs)) n.message(5, attribute(k, a));
    this.nodes.push(n);
    return output;
  }
}

/** The pieces both families share, as ONNX nodes reading a backbone's tensors by their declared names. */
function layers(G: Graph, b: Backbone) {
  const values = (s: ParamSpec) => {
    const t = b.tensors.get(s.name);
    if (!t) throw new Error(`export: weights have no tensor named ${s.name}`);
    return t.values;
  };
  const tensor = (s: ParamSpec) => G.tensor(s.name, values(s), s.shape);
  /** A Linear on the last axis; its weight stored transposed, `[in, out]`, for MatMul. */
  const linear = (l: LinearParams, x: string, output?: string) => {
    const [o, i] = l.weight.shape as [number, number];
    const W = values(l.weight);
    const Wt = new Float32Array(i * o);
    for (let r = 0; r < o; r++) for (let c = 0; c < i; c++) Wt[c * o + r] = W[r * i + c]!;
    const y = G.op('MatMul', [x, G.tensor(l.weight.name, Wt, [i, o])], {}, l.bias ? undefined : output);
    return l.bias ? G.op('Add', [y, tensor(l.bias)], {}, output) : y;
  };
  const norm = (n: NormParams, x: string, eps = 1e-6, output?: string) =>
    G.op('LayerNormalization', [x, tensor(n.weight), tensor(n.bias)], { axis: -1, epsilon: { float: eps } }, output);
  // Exact GELU: x · ½ (1 + erf(x / √2)).
  const gelu = (x: string) =>
    G.op('Mul', [G.op('Mul', [x, G.scalar(0.5)]), G.op('Add', [G.op('Erf', [G.op('Mul', [x, G.scalar(Math.SQRT1_2)])]), G.scalar(1)])]);
  const mlp = (m: MlpParams, x: string) => linear(m.fc2, gelu(linear(m.fc1, x)));
  /**
   * Multi-head attention within each sequence of `x [n, T, W]`. `bias [k, heads, T, T]`, if given, is added to the
   * scores of sequence s as its row s mod k (Swin's windows).
   */
  const attention = (m: AttentionParams, x: string, heads: number, bias?: { name: string; k: number; T: number }) => {
    const W = m.proj.weight.shape[0]!;
    const hd = W / heads;
    const qkv = linear(m.qkv, x); // [n, T, 3W]: q, k, v, each head-major
    const split = G.op('Transpose', [G.op('Reshape', [qkv, G.ints([0, 0, 3, heads, hd])])], { perm: [2, 0, 3, 1, 4] }); // [3, n, H, T, hd]
    const [q, k, v] = [0, 1, 2].map((i) => G.op('Gather', [split, G.ints([i], [])], { axis: 0 })) as [string, string, string];
    let scores = G.op('Mul', [G.op('MatMul', [q, G.op('Transpose', [k], { perm: [0, 1, 3, 2] })]), G.scalar(hd ** -0.5)]); // [n, H, T, T]
    if (bias) {
      const byRow = G.op('Reshape', [scores, G.ints([-1, bias.k, heads, bias.T, bias.T])]); // [n/k, k, H, T, T]
      scores = G.op('Reshape', [G.op('Add', [byRow, bias.name]), G.ints([-1, heads, bias.T, bias.T])]);
    }
    const attended = G.op('MatMul', [G.op('Softmax', [scores], { axis: -1 }), v]); // [n, H, T, hd]
    return linear(m.proj, G.op('Reshape', [G.op('Transpose', [attended], { perm: [0, 2, 1, 3] }), G.ints([0, 0, W])])); // [n, T, W]
  };
  /** The patch conv, stride p (trailing pixels that fill no patch dropped): `[B, D, g, g]`. */
  const patchEmbed = (proj: { weight: ParamSpec; bias: ParamSpec }) => {
    const p = proj.weight.shape[2]!;
    return G.op('Conv', ['image', tensor(proj.weight), tensor(proj.bias)], { kernel_shape: [p, p], strides: [p, p] });
  };
  return { values, tensor, linear, norm, mlp, attention, patchEmbed };
}

/**
 * The ViT backbone: the mean of the patch tokens after the last block, without a norm, as `backboneFeatures`; a
 * fine-tuned run's logits are `head(fc_norm(features))` (a probe's BatchNorm already folded into head).
 */
function vitGraph(G: Graph, b: Backbone): { D: number; classes: number } {
  const { D, heads, L } = modelDims(b.model);
  const classes = b.classes?.length ?? 0;
  const m = vitClassifierParams(b.model, { classes, probe: false });
  const o = layers(G, b);
  const tokens = G.op('Transpose', [G.op('Reshape', [o.patchEmbed(m.patch_embed.proj), G.ints([0, D, L])])], { perm: [0, 2, 1] }); // [B, L, D], raster order
  // Positions: rows 1… to the patches; row 0 (zero when pretrained) to the class token, as timm.
  const pos = o.values(m.pos_embed);
  const placed = G.op('Add', [tokens, G.tensor('pos_embed[1:]', pos.slice(D), [L, D])]);
  const cls = Float32Array.from(o.values(m.cls_token), (v, d) => v + pos[d]!);
  const batch = G.op('Shape', ['image'], { start: 0, end: 1 }); // [1]: B
  const clsB = G.op('Expand', [G.tensor('cls_token', cls, [1, 1, D]), G.op('Concat', [batch, G.ints([1, 1])], { axis: 0 })]);
  let x = G.op('Concat', [clsB, placed], { axis: 1 }); // [B, T, D]
  for (const blk of m.blocks) {
    x = G.op('Add', [x, o.attention(blk.attn, o.norm(blk.norm1, x), heads)]);
    x = G.op('Add', [x, o.mlp(blk.mlp, o.norm(blk.norm2, x))]);
  }
  const patches = G.op('Slice', [x, G.ints([1]), G.ints([1 + L]), G.ints([1])]); // [B, L, D]
  G.op('ReduceMean', [patches], { axes: [1], keepdims: 0 }, 'features');
  if (classes && 'weight' in m.head) o.linear(m.head, o.norm(m.fc_norm, 'features'), 'logits');
  return { D, classes };
}

/**
 * The Swin backbone on the standard `[B, g, g, C]` grid: the mean over the last stage's tokens after the final norm, as
 * `swinFeatures`; a fine-tuned run's logits are `head(norm(mean))`, as `SwinClassifier`. Each block attends within
 * windows offset by its shift (docs/method.md#onnx-export): the grid is padded by the offset before and up to whole
 * windows after, and padded keys get the official −100.
 */
function swinGraph(G: Graph, b: Backbone): { D: number; classes: number } {
  const d = swinDims(b.model);
  const classes = b.classes?.length ?? 0;
  const m = swinClassifierParams(d, classes);
  const o = layers(G, b);
  let x = o.norm(m.patch_embed.norm, G.op('Transpose', [o.patchEmbed(m.patch_embed.proj)], { perm: [0, 2, 3, 1] })); // [B, g, g, C]
  d.depths.forEach((depth, i) => {
    for (let j = 0; j < depth; j++) x = swinBlock(G, o, m.layers[i]!.blocks[j]!, x, d.grids[i]!, d.windows[i]!, j % 2 ? d.shifts[i]! : 0);
    const down = m.layers[i]!.downsample;
    if (!down) return;
    // timm's 2×2 merging: x0..x3 = (0,0), (1,0), (0,1), (1,1), i.e. channels ordered (dw, dh).
    const h = d.grids[i]! / 2;
    const W = d.widths[i]!;
    const grid = G.op('Reshape', [x, G.ints([-1, h, 2, h, 2, W])]); // [B, h, dh, h, dw, W]
    const merged = G.op('Reshape', [G.op('Transpose', [grid], { perm: [0, 1, 3, 4, 2, 5] }), G.ints([-1, h, h, 4 * W])]);
    x = o.linear(down.reduction, o.norm(down.norm, merged));
  });
  const tokens = G.op('Reshape', [x, G.ints([0, -1, d.widths.at(-1)!])]); // [B, T, C]
  G.op('ReduceMean', [o.norm(m.norm, tokens)], { axes: [1], keepdims: 0 }, 'features');
  if (classes) o.linear(m.head, o.norm(m.norm, G.op('ReduceMean', [tokens], { axes: [1], keepdims: 0 })), 'logits');
  return { D: d.widths.at(-1)!, classes };
}

/** A Swin block on `x [B, g, g, C]`: windowed attention with relative position bias, then the MLP (its norm eps 1e-5). */
function swinBlock(G: Graph, o: ReturnType<typeof layers>, m: SwinBlockParams, x: string, g: number, w: number, shift: number): string {
  const C = m.attn.proj.weight.shape[0]!;
  const heads = m.attn.relative_position_bias_table.shape[1]!;
  const off = (w - shift) % w;
  const n = Math.ceil((g + off) / w); // windows per side
  const gp = n * w;
  let h = o.norm(m.norm1, x);
  if (gp !== g) h = G.op('Pad', [h, G.ints([0, off, off, 0, 0, gp - g - off, gp - g - off, 0])]);
  const windows = G.op('Reshape', [
    G.op('Transpose', [G.op('Reshape', [h, G.ints([-1, n, w, n, w, C])])], { perm: [0, 1, 3, 2, 4, 5] }),
    G.ints([-1, w * w, C]),
  ]); // [B·n², w², C]
  const bias = G.tensor(
    `${m.attn.relative_position_bias_table.name}[windows]`,
    windowBias(o.values(m.attn.relative_position_bias_table), heads, w, g, off, n),
    [n * n, heads, w * w, w * w],
  );
  const a = o.attention(m.attn, windows, heads, { name: bias, k: n * n, T: w * w });
  const back = G.op('Reshape', [
    G.op('Transpose', [G.op('Reshape', [a, G.ints([-1, n, n, w, w, C])])], { perm: [0, 1, 3, 2, 4, 5] }),
    G.ints([-1, gp, gp, C]),
  ]);
  const cropped = gp === g ? back : G.op('Slice', [back, G.ints([off, off]), G.ints([off + g, off + g]), G.ints([1, 2])]);
  x = G.op('Add', [x, cropped]);
  return G.op('Add', [x, o.mlp(m.mlp, o.norm(m.norm2, x, 1e-5))]);
}

/**
 * Each window's attention bias `[n², heads, w², w²]`: the table's entry for the pair's offset, `(Δy + w − 1)(2w − 1) +
 * Δx + w − 1`, and −100 (the official mask) on keys that are padding, outside `[off, off + g)`.
 */
function windowBias(table: Float32Array, heads: number, w: number, g: number, off: number, n: number): Float32Array {
  const w2 = w * w;
  const out = new Float32Array(n * n * heads * w2 * w2);
  const inside = (v: number) => v >= off && v < off + g;
  for (let k = 0; k < n * n; k++)
    for (let h = 0; h < heads; h++)
      for (let i = 0; i < w2; i++)
        for (let j = 0; j < w2; j++) {
          const [yi, xi, yj, xj] = [Math.floor(i / w), i % w, Math.floor(j / w), j % w];
          const rel = table[((yi - yj + w - 1) * (2 * w - 1) + xi - xj + w - 1) * heads + h]!;
          const pad = !inside(Math.floor(k / n) * w + yj) || !inside((k % n) * w + xj);
          out[((k * heads + h) * w2 + i) * w2 + j] = rel + (pad ? -100 : 0);
        }
  return out;
}

/**
 * A run's backbone as an ONNX model (opset 17): input `image [batch, 3, S, S]` (ImageNet-normalised RGB, channels
 * first, any batch size), output `features [batch, D]`, what `localmim features` prints, and for a fine-tuned run
 * `logits [batch, classes]`. Initializers keep the official names; Linear weights are stored transposed, `[in, out]`.
 */
export function toOnnx(b: Backbone, metadata: Record<string, string>): Uint8Array {
  const G = new Graph();
  const swin = modelFamily(b.model) === 'swin';
  const { D, classes } = swin ? swinGraph(G, b) : vitGraph(G, b);
  const S = b.model.imgSize;
  const graph = new Message();
  for (const n of G.nodes) graph.message(1, n);
  graph.string(2, swin ? 'localmim_swin' : 'localmim_vit');
  for (const t of G.initializers) graph.message(5, t);
  graph.message(11, valueInfo('image', ['batch', 3, S, S]));
  graph.message(12, valueInfo('features', ['batch', D]));
  if (classes) graph.message(12, valueInfo('logits', ['batch', classes]));
  const model = new Message()
    .int(1, IR_VERSION)
    .string(2, 'LocalMIM Studio')
    .message(7, graph)
    .message(8, new Message().string(1, '').int(2, OPSET));
  for (const [k, v] of Object.entries(metadata)) model.message(14, new Message().string(1, k).string(2, v));
  return model.finish();
}
