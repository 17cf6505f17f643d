import * as tf from '@tensorflow/tfjs';
import { fitLinearProbe, type Embedded, type LinearHead } from '../analysis/linear-probe.js';
import { FinetuneRunSchema, PROBE_LARS, type FinetuneRun } from '../finetune-config.js';
import type { Loader } from '../data/loader.js';
import { classifierFor, isBackbone, type Classifier } from '../model/classifier.js';
import { Rng, seedFor, STREAMS } from '../random.js';
import type { RgbImage, Rgb8 } from '../image.js';
import { GradientAccumulator } from './accumulate.js';
import { AdamW } from './adamw.js';
import { LARS } from './lars.js';
import type { Task } from './loop.js';

export interface LabeledData {
  /** Training batches (cropped, augmented and erased: core/data/augment.ts); labels by item index. */
  loader: Loader<RgbImage>;
  labels: number[];
  /** Validation images, already at the model's input size (the evaluation transform), and their labels. */
  val: { images: Rgb8[]; labels: number[] };
}

/**
 * Fine-tuning (ViT or Swin) or linear probing as a task of the training loop: label-smoothed cross-entropy (with Mixup or
 * CutMix when enabled) and AdamW with each family's official layer-wise lr decay, or MAE's linear probe (plain cross-entropy, LARS on the
 * head); top-1 on the validation images at each epoch's end.
 */
export function finetuneTask(
  config: FinetuneRun,
  data: LabeledData,
  init?: ReadonlyMap<string, Float32Array>,
): Task & { model: Classifier } {
  const cfg = FinetuneRunSchema.parse(config);
  const f = cfg.finetune;
  const K = cfg.classes.length;
  const model = classifierFor(cfg.model, { classes: K, probe: f.linearProbe, scratch: cfg.from === null }, cfg.seed);
  if (init) model.params.assign(new Map([...init].filter(([name]) => isBackbone(name))));
  const trainable = new Map([...model.params.vars].filter(([name]) => !f.linearProbe || name.startsWith('head.')));
  const optimizer = f.linearProbe
    ? new LARS(trainable, { weightDecay: f.weightDecay, ...PROBE_LARS })
    : new AdamW(trainable, f, {
        lrScale: (name) => model.lrScale(name, f.layerDecay),
        decays: (name, shape) => model.decays(name, shape),
      });
  const { loader } = data;
  return {
    model,
    optimizer,
    config: cfg,
    optim: f,
    batchesPerEpoch: loader.batchesPerEpoch,
    async step(epoch, j, step, lr) {
      const acc = new GradientAccumulator([...trainable.values()], f.accumIter);
      for (let a = 0; a < f.accumIter; a++) {
        const i = j * f.accumIter + a;
        const { images, items } = await loader.batchAt(epoch, i);
        const labels = items.map((k) => data.labels[k]!);
        const { mixed, targets } = mixBatch(images, labels, K, f, new Rng(seedFor(cfg.seed, STREAMS.mix, step, a)));
        // A probe trains its head only: the frozen features and BatchNorm (which moves its statistics) stay off the tape.
        const probed = f.linearProbe ? tf.tidy(() => model.headInput(mixed, {})) : undefined;
        const dropPath = { rate: f.dropPath, rng: new Rng(seedFor(cfg.seed, STREAMS.drop, step, a)) };
        acc.add(() => crossEntropy(probed ? model.head(probed) : model.logits(mixed, { dropPath }), targets));
        probed?.dispose();
      }
      const { grads, reported: loss } = acc.result();
      optimizer.apply(grads, lr);
      const out = tf.reshape(loss, [1]) as tf.Tensor1D;
      tf.dispose([...Object.values(grads), loss]);
      return out;
    },
    evaluate: () => evaluate(model, data.val.images, data.val.labels, f.batch),
    // LP-FT starts at the probe's accuracy: scored, and checkpointed as a candidate best, before the first step.
    evaluateFirst: f.probeInit,
    dispose() {
      optimizer.dispose();
      model.dispose();
    },
  };
}

/**
 * LP-FT: fits the logistic-regression probe (core/analysis/linear-probe.ts) on the head's input of `images` (at the
 * evaluation transform) and makes it the classifier's `head`, its standardisation folded into the weights, so that the
 * classifier's logits are the probe's. Returns the probe.
 */
export async function headFromProbe(model: Classifier, images: Rgb8[], labels: number[], seed: number, batch: number): Promise<LinearHead> {
  return fitHead(model, await headInputs(model, images, labels, batch), seed);
}

/** The same on head inputs computed elsewhere (the torch engine's): the one fit, folded into the classifier's `head`. */
export async function fitHead(model: Classifier, train: Embedded, seed: number): Promise<LinearHead> {
  const { head } = await fitLinearProbe(train, model.classes, { seed });
  const [D, K] = [train.dim, model.classes];
  const weight = new Float32Array(K * D);
  const bias = Float64Array.from(head.bias);
  for (let d = 0; d < D; d++)
    for (let k = 0; k < K; k++) {
      const w = head.weight[d * K + k]! / head.std[d]!;
      weight[k * D + d] = w;
      bias[k]! -= head.mean[d]! * w;
    }
  model.params.assign(
    new Map([
      ['head.weight', weight],
      ['head.bias', Float32Array.from(bias)],
    ]),
  );
  return head;
}

/** What the classifier's head sees of each image (evaluation mode): the features its probe is fitted on. */
export async function headInputs(model: Classifier, images: Rgb8[], labels: number[], batch: number): Promise<Embedded> {
  const parts: Float32Array[] = [];
  let dim = 0;
  for (let i = 0; i < images.length; i += batch) {
    const x = tf.tidy(() => model.headInput(images.slice(i, i + batch)));
    dim = x.shape[1]!;
    parts.push((await x.data()) as Float32Array);
    x.dispose();
  }
  const features = new Float32Array(images.length * dim);
  parts.reduce((at, p) => (features.set(p, at), at + p.length), 0);
  return { features, dim, labels };
}

/** Soft-target cross-entropy: `mean_b Σ_k −t[b,k] · log softmax(logits)[b,k]`. */
function crossEntropy(logits: tf.Tensor, targets: Float32Array): tf.Scalar {
  const t = tf.tensor2d(targets, logits.shape as [number, number]);
  return tf.mean(tf.sum(tf.mul(t, tf.neg(tf.logSoftmax(logits))), -1));
}

/**
 * Label smoothing, and (when enabled) Mixup or CutMix with the batch's mirror image, as timm's `Mixup` in batch mode:
 * one λ ~ Beta(α, α) per batch, CutMix instead of Mixup with p = 0.5 when both are on, and timm's box (side
 * ⌊H·√(1−λ)⌋ about a uniform integer centre, clipped) with λ corrected to the area kept.
 */
export function mixBatch(images: RgbImage[], labels: number[], K: number, f: FinetuneRun['finetune'], rng: Rng) {
  const B = images.length;
  const smooth = (y: number) => Float32Array.from({ length: K }, (_, k) => (k === y ? 1 - f.smoothing : 0) + f.smoothing / K);
  const useCutmix = f.cutmix > 0 && (f.mixup === 0 || rng.next() < 0.5);
  const alpha = useCutmix ? f.cutmix : f.mixup;
  const targets = new Float32Array(B * K);
  if (alpha <= 0) {
    labels.forEach((y, b) => targets.set(smooth(y), b * K));
    return { mixed: images, targets };
  }
  let lambda = beta(alpha, rng);
  const { width: W, height: H } = images[0]!;
  let box = { x0: 0, y0: 0, x1: 0, y1: 0 };
  if (useCutmix) {
    const [cutH, cutW] = [Math.trunc(H * Math.sqrt(1 - lambda)), Math.trunc(W * Math.sqrt(1 - lambda))];
    const [cy, cx] = [Math.floor(rng.next() * H), Math.floor(rng.next() * W)];
    const clip = (v: number, hi: number) => Math.min(hi, Math.max(0, v));
    box = {
      x0: clip(cx - Math.floor(cutW / 2), W),
      x1: clip(cx + Math.floor(cutW / 2), W),
      y0: clip(cy - Math.floor(cutH / 2), H),
      y1: clip(cy + Math.floor(cutH / 2), H),
    };
    lambda = 1 - ((box.x1 - box.x0) * (box.y1 - box.y0)) / (W * H);
  }
  const mixed = images.map((img, b) => {
    const other = images[B - 1 - b]!.data;
    const data = Float32Array.from(img.data);
    for (let i = 0; i < data.length; i++) {
      const [y, x] = [Math.floor(i / 3 / W), Math.floor(i / 3) % W];
      if (!useCutmix) data[i] = lambda * data[i]! + (1 - lambda) * other[i]!;
      else if (x >= box.x0 && x < box.x1 && y >= box.y0 && y < box.y1) data[i] = other[i]!;
    }
    return { width: W, height: H, data };
  });
  labels.forEach((y, b) => {
    const [a, c] = [smooth(y), smooth(labels[B - 1 - b]!)];
    for (let k = 0; k < K; k++) targets[b * K + k] = lambda * a[k]! + (1 - lambda) * c[k]!;
  });
  return { mixed, targets };
}

/** Beta(α, α) from two Gamma(α) draws (Marsaglia–Tsang, boosted for α < 1). */
function beta(alpha: number, rng: Rng): number {
  const gamma = (a: number): number => {
    if (a < 1) return gamma(a + 1) * rng.next() ** (1 / a);
    const d = a - 1 / 3;
    const c = 1 / Math.sqrt(9 * d);
    for (;;) {
      const x = rng.normal();
      const v = (1 + c * x) ** 3;
      if (v > 0 && Math.log(1 - rng.next()) < 0.5 * x * x + d - d * v + d * Math.log(v)) return d * v;
    }
  };
  const [x, y] = [gamma(alpha), gamma(alpha)];
  return x / (x + y);
}

/** Top-1 accuracy and mean cross-entropy on the validation images. */
async function evaluate(model: Classifier, images: Rgb8[], labels: number[], batch: number): Promise<{ top1: number; loss: number }> {
  let correct = 0;
  let loss = 0;
  for (let i = 0; i < images.length; i += batch) {
    const chunk = images.slice(i, i + batch);
    const ys = labels.slice(i, i + batch);
    const [argmax, total] = tf.tidy(() => {
      const logits = model.logits(chunk);
      const picked = tf.sum(tf.mul(tf.logSoftmax(logits), tf.oneHot(tf.tensor1d(ys, 'int32'), model.classes)), -1);
      return [tf.argMax(logits, -1), tf.neg(tf.sum(picked))];
    });
    const [pred, nll] = (await Promise.all([argmax.data(), total.data()])) as [Int32Array, Float32Array];
    tf.dispose([argmax, total]);
    pred.forEach((p, b) => (correct += p === ys[b] ? 1 : 0));
    loss += nll[0]!;
  }
  return { top1: images.length ? correct / images.length : 0, loss: images.length ? loss / images.length : 0 };
}
