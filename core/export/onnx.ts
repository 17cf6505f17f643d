import { modelDims } from '../config.js';
import { vitClassifierParams } from '../model/classifier.js';
import type { LinearParams, NormParams, ParamSpec } from '../model/module.js';
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
  private count = 0;

  /** A float32 initializer (little-endian raw data). */
  tensor(name: string, values: Float32Array, dims: readonly number[]): string {
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

/**
 * The ViT backbone as an ONNX model (opset 17): input `image [batch, 3, S, S]` (ImageNet-normalised RGB, channels
 * first), output `features [batch, D]`, the mean of the patch tokens after the last block as `localmim features`
 * (`backboneFeatures`), and for a fine-tuned run `logits [batch, classes]` (fc_norm, then head; a probe's head folded).
 * Initializers keep the official names; Linear weights are stored transposed, `[in, out]`.
 */
export function vitOnnx(b: Backbone, metadata: Record<string, string>): Uint8Array {
  const { D, heads, p, L } = modelDims(b.model);
  const S = b.model.imgSize;
  const hd = D / heads;
  const classes = b.classes?.length ?? 0;
  const m = vitClassifierParams(b.model, { classes, probe: false });
  const G = new Graph();
  const values = (s: ParamSpec) => {
    const t = b.tensors.get(s.name);
    if (!t) throw new Error(`export: weights have no tensor named ${s.name}`);
    return t.values;
  };
  const tensor = (s: ParamSpec) => G.tensor(s.name, values(s), s.shape);
  const linear = (l: LinearParams, x: string, output?: string) => {
    const [o, i] = l.weight.shape as [number, number];
    const W = values(l.weight);
    const Wt = new Float32Array(i * o);
    for (let r = 0; r < o; r++) for (let c = 0; c < i; c++) Wt[c * o + r] = W[r * i + c]!;
    return G.op('Add', [G.op('MatMul', [x, G.tensor(l.weight.name, Wt, [i, o])]), tensor(l.bias!)], {}, output);
  };
  const norm = (n: NormParams, x: string, output?: string) =>
    G.op('LayerNormalization', [x, tensor(n.weight), tensor(n.bias)], { axis: -1, epsilon: { float: 1e-6 } }, output);
  // Exact GELU: x · ½ (1 + erf(x / √2)).
  const gelu = (x: string) =>
    G.op('Mul', [G.op('Mul', [x, G.scalar(0.5)]), G.op('Add', [G.op('Erf', [G.op('Mul', [x, G.scalar(Math.SQRT1_2)])]), G.scalar(1)])]);

  // Patch embedding: the conv, stride p (trailing pixels that fill no patch dropped), tokens in raster order.
  const conv = G.op('Conv', ['image', tensor(m.patch_embed.proj.weight), tensor(m.patch_embed.proj.bias)], {
    kernel_shape: [p, p],
    strides: [p, p],
  }); // [B, D, g, g]
  const tokens = G.op('Transpose', [G.op('Reshape', [conv, G.ints([0, D, L])])], { perm: [0, 2, 1] }); // [B, L, D]
  // Positions: rows 1… to the patches; row 0 (zero when pretrained) to the class token, as timm.
  const pos = values(m.pos_embed);
  const placed = G.op('Add', [tokens, G.tensor('pos_embed[1:]', pos.slice(D), [L, D])]);
  const cls = Float32Array.from(values(m.cls_token), (v, d) => v + pos[d]!);
  const batch = G.op('Shape', ['image'], { start: 0, end: 1 }); // [1]: B
  const clsB = G.op('Expand', [G.tensor('cls_token', cls, [1, 1, D]), G.op('Concat', [batch, G.ints([1, 1])], { axis: 0 })]);
  let x = G.op('Concat', [clsB, placed], { axis: 1 }); // [B, T, D]

  for (const blk of m.blocks) {
    const qkv = linear(blk.attn.qkv, norm(blk.norm1, x)); // [B, T, 3D]: q, k, v, each head-major
    const split = G.op('Transpose', [G.op('Reshape', [qkv, G.ints([0, 0, 3, heads, hd])])], { perm: [2, 0, 3, 1, 4] }); // [3, B, H, T, hd]
    const [q, k, v] = [0, 1, 2].map((i) => G.op('Gather', [split, G.ints([i], [])], { axis: 0 })) as [string, string, string];
    const scores = G.op('Mul', [G.op('MatMul', [q, G.op('Transpose', [k], { perm: [0, 1, 3, 2] })]), G.scalar(hd ** -0.5)]); // [B, H, T, T]
    const attended = G.op('MatMul', [G.op('Softmax', [scores], { axis: -1 }), v]); // [B, H, T, hd]
    const merged = G.op('Reshape', [G.op('Transpose', [attended], { perm: [0, 2, 1, 3] }), G.ints([0, 0, D])]); // [B, T, D]
    x = G.op('Add', [x, linear(blk.attn.proj, merged)]);
    x = G.op('Add', [x, linear(blk.mlp.fc2, gelu(linear(blk.mlp.fc1, norm(blk.norm2, x))))]);
  }
  const patches = G.op('Slice', [x, G.ints([1]), G.ints([1 + L]), G.ints([1])]); // [B, L, D]
  G.op('ReduceMean', [patches], { axes: [1], keepdims: 0 }, 'features');
  const outputs = [valueInfo('features', ['batch', D])];
  if (classes && 'weight' in m.head) {
    linear(m.head, norm(m.fc_norm, 'features'), 'logits');
    outputs.push(valueInfo('logits', ['batch', classes]));
  }

  const graph = new Message();
  for (const n of G.nodes) graph.message(1, n);
  graph.string(2, 'localmim_vit');
  for (const t of G.initializers) graph.message(5, t);
  graph.message(11, valueInfo('image', ['batch', 3, S, S]));
  for (const o of outputs) graph.message(12, o);
  const model = new Message()
    .int(1, IR_VERSION)
    .string(2, 'LocalMIM Studio')
    .message(7, graph)
    .message(8, new Message().string(1, '').int(2, OPSET));
  for (const [k, v] of Object.entries(metadata)) model.message(14, new Message().string(1, k).string(2, v));
  return model.finish();
}
