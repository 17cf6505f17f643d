import { THROUGHPUT_GFLOPS as GFLOPS } from '../backend.js';
import { modelDims, modelFamily, swinDims, type RunConfig } from '../config.js';
import { localMimParams } from '../model/localmim.js';
import { count } from '../model/module.js';
import { swinLocalMimParams } from '../model/swin-localmim.js';

/**
 * Parameters, memory and time per epoch of a run, before it starts: parameter count exact, memory and
 * time estimated (weights + gradients + two AdamW moments + activations and attention maps; FLOPs ≈ 6 · params-in-use · tokens).
 */
export function estimate(c: RunConfig, images: number, backend: string) {
  if (modelFamily(c.model) === 'swin') return estimateSwin(c, images, backend);
  const { D, depth, heads, nKeep, L, scales, p } = modelDims(c.model);
  const d = c.model.decoderDim;
  const m = localMimParams(c.model);
  const params = count(m);
  const decoders = count(m.decoder);
  const encoder = params - decoders;
  const B = c.optim.batch;
  const flopsPerImage = 6 * ((encoder - 3 * p * p * D) * (1 + nKeep) + 3 * p * p * D * nKeep + decoders * (1 + L));
  const { decoderHeads, decoderDepth } = c.model;
  const tokens = B * (depth * (1 + nKeep) * D * 14 + scales.length * (1 + L) * d * 14);
  // Attention scores and probabilities, kept for backward: quadratic in tokens, what large images run out of.
  const attention = 2 * B * (depth * heads * (1 + nKeep) ** 2 + scales.length * decoderDepth * decoderHeads * (1 + L) ** 2);
  const activations = (tokens + attention) * 4;
  // The largest single tensor, an attention map: a GPU binds each buffer whole, up to its adapter's limit.
  const largestBuffer = 4 * B * Math.max(heads * (1 + nKeep) ** 2, decoderHeads * (1 + L) ** 2);
  const stepsPerEpoch = Math.floor(images / B / c.optim.accumIter);
  return {
    params,
    encoderParams: encoder,
    memoryMB: Math.round((params * 16 + activations) / 1e6),
    largestBufferMB: Math.ceil(largestBuffer / 1e6),
    secondsPerEpoch: (stepsPerEpoch * B * c.optim.accumIter * flopsPerImage) / ((GFLOPS[backend] ?? 10) * 1e9),
    stepsPerEpoch,
  };
}

/**
 * The same estimate for Swin LocalMIM (docs/method.md#swin): per stage, the visible tokens through its blocks (Linears
 * 12·W² multiply-adds a token, window attention 2·w²·W) and its merging; per stage, a decoder over the full output grid.
 */
function estimateSwin(c: RunConfig, images: number, backend: string) {
  const d = swinDims(c.model);
  const { decoderDepth, decoderHeads, mlpRatio: r } = c.model;
  const visible = d.units - d.nMasked;
  const m = swinLocalMimParams(c.model);
  const params = count(m);
  // The backbone: what export and fine-tuning keep (the per-stage latent norms are the decoders').
  const encoderParams = params - count(m.norm) - count(m.decoder);
  const B = c.optim.batch;
  // Multiply-adds per image, forward; training costs about 3× that, at 2 FLOPs each.
  let macs = 0;
  let tokens = 0;
  let attention = 0;
  let largest = 0;
  d.widths.forEach((W, i) => {
    const N = visible * (d.grids[i]! / d.maskGrid) ** 2;
    const window = Math.min(d.windows[i]! ** 2, N);
    macs += N * 3 * d.p * d.p * d.C * (i === 0 ? 1 : 0) + d.depths[i]! * N * ((4 + 2 * r) * W * W + 2 * window * W);
    if (i < d.widths.length - 1) macs += (N / 4) * 8 * W * W;
    tokens += d.depths[i]! * N * W * 14;
    attention += 2 * d.depths[i]! * d.heads[i]! * N * window;
    largest = Math.max(largest, d.heads[i]! * N * window);
  });
  d.taps.forEach((t, k) => {
    const L = d.outGrids[t]! ** 2;
    const w = d.decoderDims[k]!;
    macs += L * (d.outWidths[t]! * w + decoderDepth * (4 + 2 * r) * w * w + w * d.F[k]! * d.scales[k]! ** 2) + decoderDepth * 2 * L * L * w;
    tokens += decoderDepth * L * w * 14;
    attention += 2 * decoderDepth * decoderHeads * L * L;
    largest = Math.max(largest, decoderHeads * L * L);
  });
  const stepsPerEpoch = Math.floor(images / B / c.optim.accumIter);
  return {
    params,
    encoderParams,
    memoryMB: Math.round((params * 16 + 4 * B * (tokens + attention)) / 1e6),
    largestBufferMB: Math.ceil((4 * B * largest) / 1e6),
    secondsPerEpoch: (stepsPerEpoch * B * c.optim.accumIter * 6 * macs) / ((GFLOPS[backend] ?? 10) * 1e9),
    stepsPerEpoch,
  };
}
