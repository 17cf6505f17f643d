import type { SwinDims } from '../config.js';

// Swin's window planning, on the host from the mask (no tensors): which tokens attend to which — windows, shifted
// windows, padding into groups — as the official `GroupingModule` does; swin.ts turns a plan into device tensors.

/** Token coordinates after a patch merging: the official pretraining's, or the true ones (docs/method.md#swin-coordinates). */
export type CoordRule = 'official' | 'true';

/** One attention pass's grouping of a stage's N tokens (official `GroupingModule.prepare`). */
export interface GroupPlan {
  mode: 'masking' | 'grouping';
  /** Groups and tokens per group; masking mode is one group of all N tokens in their order. */
  nG: number;
  GS: number;
  /** Grouping mode: the token in each slot `[nG·GS]` (−1 = padding), and each token's slot `[N]`. */
  order: Int32Array | null;
  slots: Int32Array | null;
  /** Per slot: the window id (−1 = padding) and the position inside its window, `ly·w + lx` (−1 = padding). */
  groupId: Int32Array;
  local: Int32Array;
}

export interface StagePlan {
  /** Tokens entering the stage, their `(row, col)` coordinates `[N·2]`, the unshifted and shifted groupings. */
  N: number;
  coords: Int32Array;
  plain: GroupPlan;
  shifted: GroupPlan | null;
}

/** The host-side bookkeeping of a batch's mask: every stage's groupings, and where each stage's output tokens lie. */
export interface SwinPlan {
  /** Visible mask units, raster order over the mask grid. */
  units: Int32Array;
  stages: StagePlan[];
  /** Per stage: for each raster position of the stage's output grid, the output token there (−1 = masked). */
  restore: Int32Array[];
}

/** Plans the encoder for the visible mask units `units` (raster indices over the mask grid, increasing). */
export function swinPlan(d: SwinDims, units: Int32Array, rule: CoordRule = 'official'): SwinPlan {
  const G = d.maskGrid;
  const stages = d.grids.map((g, i): StagePlan => {
    const r = g / G;
    const N = units.length * r * r;
    const coords = new Int32Array(2 * N);
    for (let n = 0; n < N; n++) {
      const u = units[Math.floor(n / (r * r))]!;
      const t = n % (r * r);
      const [y, x] = [Math.floor(u / G) * r + Math.floor(t / r), (u % G) * r + (t % r)];
      // After a merging the official code reads the unit-major index of a token as a raster index (docs/method.md#swin-coordinates).
      const m = u * r * r + t;
      const official = i > 0 && rule === 'official';
      coords[2 * n] = official ? Math.floor(m / g) : y;
      coords[2 * n + 1] = official ? m % g : x;
    }
    const w = d.windows[i]!;
    const mode = N <= 2 * w * w ? 'masking' : 'grouping';
    const plain = groupPlan(coords, w, 0, mode);
    return { N, coords, plain, shifted: d.shifts[i] ? groupPlan(coords, w, d.shifts[i]!, mode) : null };
  });
  const restore = d.outGrids.map((g) => {
    const r = g / G;
    const out = new Int32Array(g * g).fill(-1);
    units.forEach((u, k) => {
      for (let t = 0; t < r * r; t++) {
        const [y, x] = [Math.floor(u / G) * r + Math.floor(t / r), (u % G) * r + (t % r)];
        out[y * g + x] = k * r * r + t;
      }
    });
    return out;
  });
  return { units, stages, restore };
}

/** The official `GroupingModule` for one window size and shift, in masking or grouping mode. */
function groupPlan(coords: Int32Array, w: number, shift: number, mode: GroupPlan['mode']): GroupPlan {
  const N = coords.length / 2;
  const off = (w - shift) % w;
  // The official id multiplies the window row by the token count, not the window columns: same order, same groups.
  const gid = Int32Array.from(
    { length: N },
    (_, n) => Math.floor((coords[2 * n]! + off) / w) * N + Math.floor((coords[2 * n + 1]! + off) / w),
  );
  const localOf = (n: number) => ((coords[2 * n]! + off) % w) * w + ((coords[2 * n + 1]! + off) % w);
  if (mode === 'masking') {
    return { mode, nG: 1, GS: N, order: null, slots: null, groupId: gid, local: Int32Array.from({ length: N }, (_, n) => localOf(n)) };
  }
  // Tokens by window, windows by id; the knapsack packs windows into groups of at most the largest window's count.
  const byWindow = new Map<number, number[]>();
  for (const n of [...gid.keys()].sort((a, b) => gid[a]! - gid[b]! || a - b)) {
    if (!byWindow.has(gid[n]!)) byWindow.set(gid[n]!, []);
    byWindow.get(gid[n]!)!.push(n);
  }
  const windows = [...byWindow.values()];
  const GS = Math.min(w * w, Math.max(...windows.map((t) => t.length)));
  const groups = groupWindows(
    GS,
    windows.map((t) => t.length),
  );
  const order = new Int32Array(groups.length * GS).fill(-1);
  groups.forEach((g, j) =>
    order.set(
      g.flatMap((k) => windows[k]!),
      j * GS,
    ),
  );
  const slots = new Int32Array(N);
  order.forEach((n, s) => n >= 0 && (slots[n] = s));
  return {
    mode,
    nG: groups.length,
    GS,
    order,
    slots,
    groupId: order.map((n) => (n < 0 ? -1 : gid[n]!)),
    local: order.map((n) => (n < 0 ? -1 : localOf(n))),
  };
}

/** 0/1 knapsack of capacity W over item weights = values `wt` (the official DP): the best total and the chosen items, increasing. */
export function knapsack(W: number, wt: number[]): [number, number[]] {
  const n = wt.length;
  const K = Array.from({ length: n + 1 }, () => new Array<number>(W + 1).fill(0));
  for (let i = 1; i <= n; i++)
    for (let c = 1; c <= W; c++)
      K[i]![c] = wt[i - 1]! <= c ? Math.max(wt[i - 1]! + K[i - 1]![c - wt[i - 1]!]!, K[i - 1]![c]!) : K[i - 1]![c]!;
  let res = K[n]![W]!;
  let c = W;
  const idx: number[] = [];
  for (let i = n; i > 0 && res > 0; i--) {
    if (res === K[i - 1]![c]) continue;
    idx.push(i - 1);
    res -= wt[i - 1]!;
    c -= wt[i - 1]!;
  }
  return [K[n]![W]!, idx.reverse()];
}

/** The official `group_windows`: knapsack after knapsack over the remaining windows; returns each group's window indices. */
export function groupWindows(size: number, counts: number[]): number[][] {
  let wt = [...counts];
  let ids = counts.map((_, i) => i);
  const groups: number[][] = [];
  while (wt.length > 0) {
    const [, idx] = knapsack(size, wt);
    groups.push(idx.map((i) => ids[i]!));
    const chosen = new Set(idx);
    wt = wt.filter((_, i) => !chosen.has(i));
    ids = ids.filter((_, i) => !chosen.has(i));
  }
  return groups;
}
