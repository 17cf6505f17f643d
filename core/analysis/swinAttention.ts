import * as tf from '@tensorflow/tfjs';
import { swinDims, type ModelConfig } from '../config.js';
import { UserError } from '../errors.js';
import { fullPlan, swinTokens } from '../model/classifier.js';
import { disposePlanTensors } from '../model/swin.js';
import type { GroupPlan } from '../model/swin-windows.js';
import type { Param } from '../model/module.js';
import type { RgbImage } from '../image.js';
import { meanPairKL, nmi } from './attention.js';

export interface WindowAttentionLayer {
  /** Stage, block within it and block over all stages; the stage's token grid, window and shift. */
  stage: number;
  block: number;
  index: number;
  grid: number;
  window: number;
  shift: number;
  /** Mean over windows and heads of NMI and mean pairwise KL of each window's `[n, n]` attention. */
  nmi: number;
  kl: number;
  /** The query token's attention over the stage's grid, per head `[H][grid²]` and averaged: zero outside its window. */
  heads: number[][];
  mean: number[];
}

/**
 * Swin's attention on one image, block by block (docs/method.md#swin-attention-maps): within each (shifted) window, as
 * the fine-tuning model computes it. `query` is a patch of the first stage's grid; at stage i the token covering it.
 */
export async function swinWindowAttention(P: Param, model: ModelConfig, image: RgbImage, query: number): Promise<WindowAttentionLayer[]> {
  const d = swinDims(model);
  const g0 = d.grids[0]!;
  if (query < 0 || query >= g0 * g0) throw new UserError(`query: patch ${query} is outside the ${g0}×${g0} grid (0…${g0 * g0 - 1})`);
  const plan = fullPlan(d);
  const kept: { stage: number; block: number; probs: tf.Tensor; g: GroupPlan }[] = [];
  try {
    tf.tidy(() => {
      swinTokens(P, plan, [image], { onAttention: (stage, block, probs, g) => kept.push({ stage, block, probs: tf.keep(probs), g }) });
    });
    const layers: WindowAttentionLayer[] = [];
    for (const [index, { stage, block, probs, g }] of kept.entries()) {
      const a = (await probs.data()) as Float32Array;
      const { coords } = plan.plan.stages[stage]!;
      const grid = d.grids[stage]!;
      const at = (y: number, x: number) =>
        [...Array(coords.length / 2).keys()].find((n) => coords[2 * n] === y && coords[2 * n + 1] === x)!;
      const q = at(Math.floor(query / g0) >> stage, (query % g0) >> stage);
      const stats = windowStats(a, g, d.heads[stage]!);
      const heads = queryMaps(a, g, d.heads[stage]!, q, coords, grid);
      layers.push({
        stage,
        block,
        index,
        grid,
        window: d.windows[stage]!,
        shift: block % 2 === 1 ? d.shifts[stage]! : 0,
        ...stats,
        heads,
        mean: heads[0]!.map((_, k) => heads.reduce((s, h) => s + h[k]!, 0) / heads.length),
      });
    }
    return layers;
  } finally {
    tf.dispose(kept.map((k) => k.probs));
    disposePlanTensors(plan);
  }
}

/** Each group's slots by window id: the windows of a grouping, as slot lists `{ group, slots }`. */
function windowsOf(g: GroupPlan): { group: number; slots: number[] }[] {
  const out = new Map<string, { group: number; slots: number[] }>();
  for (let j = 0; j < g.nG; j++)
    for (let s = 0; s < g.GS; s++) {
      const id = g.groupId[j * g.GS + s]!;
      if (id < 0) continue;
      const key = `${j}:${id}`;
      if (!out.has(key)) out.set(key, { group: j, slots: [] });
      out.get(key)!.slots.push(s);
    }
  return [...out.values()];
}

/** NMI and mean pairwise KL of every window's attention `[n, n]` (rows renormalised within it), averaged over windows and heads. */
function windowStats(a: Float32Array, g: GroupPlan, heads: number): { nmi: number; kl: number } {
  let [sumN, sumK, count] = [0, 0, 0];
  for (const { group, slots } of windowsOf(g)) {
    const n = slots.length;
    for (let h = 0; h < heads; h++) {
      const A = new Float64Array(n * n);
      const base = (group * heads + h) * g.GS * g.GS;
      for (let r = 0; r < n; r++) {
        let z = 0;
        for (let c = 0; c < n; c++) z += A[r * n + c] = a[base + slots[r]! * g.GS + slots[c]!]!;
        for (let c = 0; c < n; c++) A[r * n + c]! /= z;
      }
      sumN += nmi(A, n, n);
      sumK += meanPairKL(A, n, n);
      count++;
    }
  }
  return { nmi: sumN / count, kl: sumK / count };
}

/** Token `q`'s attention per head over a `grid × grid` stage (tokens placed by their coordinates), its window only. */
function queryMaps(a: Float32Array, g: GroupPlan, heads: number, q: number, coords: Int32Array, grid: number): number[][] {
  const slot = g.slots ? g.slots[q]! : q;
  const [group, row] = [Math.floor(slot / g.GS), slot % g.GS];
  const id = g.groupId[slot]!;
  return Array.from({ length: heads }, (_, h) => {
    const map = new Array<number>(grid * grid).fill(0);
    const base = ((group * heads + h) * g.GS + row) * g.GS;
    for (let s = 0; s < g.GS; s++) {
      if (g.groupId[group * g.GS + s] !== id) continue;
      const n = g.order ? g.order[group * g.GS + s]! : s;
      map[coords[2 * n]! * grid + coords[2 * n + 1]!] = a[base + s]!;
    }
    return map;
  });
}
