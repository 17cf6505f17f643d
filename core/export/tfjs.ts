import * as tf from '@tensorflow/tfjs';
import { modelDims } from '../config.js';
import { vitClassifierParams } from '../model/classifier.js';
import type { LinearParams, NormParams, ParamSpec } from '../model/module.js';
import type { Backbone } from './backbone.js';

/**
 * The backbone as a tfjs LayersModel built from standard layers only, so that `tf.loadLayersModel` needs
 * no custom classes: input `[S, S, 3]` (ImageNet-normalised, channels last), output the mean-pooled
 * patch-token features `[D]` (and class scores when the run was fine-tuned). The class token and the
 * positions are constants, made by a Dense layer with a zero kernel and the constant as its bias.
 */
export function buildLayersModel(b: Backbone): tf.LayersModel {
  const { D, heads, p, L } = modelDims(b.model);
  const S = b.model.imgSize;
  const hd = D / heads;
  const T = 1 + L;
  // The exported tensors are the fine-tuning model's (a probe's head folded into one Linear), or its backbone.
  const m = vitClassifierParams(b.model, { classes: b.classes?.length ?? 0, probe: false });
  const w = (s: ParamSpec) => {
    const t = b.tensors.get(s.name);
    if (!t) throw new Error(`export: weights have no tensor named ${s.name}`);
    return tf.tensor(t.values, t.shape);
  };
  const dense = (units: number, kernel: tf.Tensor, bias: tf.Tensor, activation?: 'gelu') => ({
    layer: tf.layers.dense({ units, activation }),
    weights: [kernel, bias],
  });
  const pending: [tf.layers.Layer, tf.Tensor[]][] = [];
  const apply = <T extends tf.SymbolicTensor | tf.SymbolicTensor[]>(l: { layer: tf.layers.Layer; weights: tf.Tensor[] }, x: T) => {
    const out = l.layer.apply(x) as tf.SymbolicTensor;
    pending.push([l.layer, l.weights]);
    return out;
  };
  const linear = (l: LinearParams, x: tf.SymbolicTensor, activation?: 'gelu') => {
    const W = w(l.weight); // [out, in]
    return apply(dense(W.shape[0]!, tf.transpose(W), w(l.bias!), activation), x);
  };
  const norm = (n: NormParams, x: tf.SymbolicTensor) =>
    apply({ layer: tf.layers.layerNormalization({ axis: -1, epsilon: 1e-6 }), weights: [w(n.weight), w(n.bias)] }, x);
  const constant = (from: tf.SymbolicTensor, values: tf.Tensor, shape: number[]) =>
    tf.layers
      .reshape({ targetShape: shape })
      .apply(apply(dense(values.size, tf.zeros([D, values.size]), tf.reshape(values, [-1])), from)) as tf.SymbolicTensor;

  const input = tf.input({ shape: [S, S, 3], name: 'image' });
  const conv = tf.layers.conv2d({ filters: D, kernelSize: p, strides: p, padding: 'valid' });
  const embedded = apply(
    { layer: conv, weights: [tf.transpose(w(m.patch_embed.proj.weight), [2, 3, 1, 0]), w(m.patch_embed.proj.bias)] },
    input,
  );
  const tokens = tf.layers.reshape({ targetShape: [L, D] }).apply(embedded) as tf.SymbolicTensor;
  const summary = tf.layers.globalAveragePooling1d().apply(tokens) as tf.SymbolicTensor;
  const cls = constant(summary, w(m.cls_token), [1, D]);
  const pos = constant(summary, w(m.pos_embed), [T, D]);
  let x = tf.layers.add().apply([tf.layers.concatenate({ axis: 1 }).apply([cls, tokens]) as tf.SymbolicTensor, pos]) as tf.SymbolicTensor;

  for (const blk of m.blocks) {
    const h = norm(blk.norm1, x);
    const qkvW = w(blk.attn.qkv.weight); // [3D, D]: q, k, v, each head-major
    const qkvB = w(blk.attn.qkv.bias!);
    const headOut = Array.from({ length: heads }, (_, j) => {
      const part = (k: number, scale = 1) => {
        const rows = tf.slice(qkvW, [k * D + j * hd, 0], [hd, D]);
        return apply(dense(hd, tf.mul(tf.transpose(rows), scale), tf.mul(tf.slice(qkvB, [k * D + j * hd], [hd]), scale)), h);
      };
      const scores = tf.layers.dot({ axes: [2, 2] }).apply([part(0, hd ** -0.5), part(1)]) as tf.SymbolicTensor; // [T, T]
      const probs = tf.layers.softmax({ axis: -1 }).apply(scores) as tf.SymbolicTensor;
      return tf.layers.dot({ axes: [2, 1] }).apply([probs, part(2)]) as tf.SymbolicTensor; // [T, hd]
    });
    const merged = heads > 1 ? (tf.layers.concatenate({ axis: -1 }).apply(headOut) as tf.SymbolicTensor) : headOut[0]!;
    x = tf.layers.add().apply([x, linear(blk.attn.proj, merged)]) as tf.SymbolicTensor;
    const y = linear(blk.mlp.fc2, linear(blk.mlp.fc1, norm(blk.norm2, x), 'gelu'));
    x = tf.layers.add().apply([x, y]) as tf.SymbolicTensor;
  }
  // Mean over the patch tokens only: a Dense over the token axis with weights 0 (class token), 1/L (patches).
  const byToken = tf.layers.permute({ dims: [2, 1] }).apply(x) as tf.SymbolicTensor; // [D, T]
  const pool = tf.tensor2d(
    Float32Array.from({ length: T }, (_, t) => (t === 0 ? 0 : 1 / L)),
    [T, 1],
  );
  const pooled = apply({ layer: tf.layers.dense({ units: 1, useBias: false }), weights: [pool] }, byToken); // [D, 1]
  const features = tf.layers.flatten({ name: 'features' }).apply(pooled) as tf.SymbolicTensor;
  const outputs = [features];
  if (b.classes && 'weight' in m.head) outputs.push(linear(m.head, norm(m.fc_norm, features)));
  const model = tf.model({ inputs: input, outputs });
  for (const [layer, weights] of pending) {
    layer.setWeights(weights);
    tf.dispose(weights);
  }
  return model;
}

/** Writes `model.json` and `weights.bin` as tfjs's file format: loadable by `tf.loadLayersModel`. */
export async function saveLayersModel(model: tf.LayersModel, write: (file: string, data: Uint8Array | string) => void): Promise<void> {
  await model.save(
    tf.io.withSaveHandler(async (artifacts) => {
      write('weights.bin', new Uint8Array(artifacts.weightData as ArrayBuffer));
      const json = {
        modelTopology: artifacts.modelTopology,
        format: 'layers-model',
        generatedBy: `TensorFlow.js tfjs-layers v${tf.version.tfjs}`,
        convertedBy: 'LocalMIM Studio',
        weightsManifest: [{ paths: ['weights.bin'], weights: artifacts.weightSpecs }],
      };
      write('model.json', JSON.stringify(json));
      return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
    }),
  );
}
