import * as tf from '@tensorflow/tfjs';

// tfjs's Engine.gradients keeps every intermediate gradient, and every tensor saved for the backward pass, until
// the whole backward pass ends, so a training step peaks at its activations plus the gradients of all of them.
// This replaces it (for first-order gradients, the only kind training takes) with the same walk over the tape
// that frees each node's output gradients and saved tensors as soon as the node is done, as PyTorch's autograd
// does. Everything it reads of the engine's private state is declared here; test/backprop.test.ts fails loudly
// if a tfjs upgrade changes it.

interface TapeNode {
  id: number;
  kernelName: string;
  inputs: Record<string, tf.Tensor>;
  outputs: tf.Tensor[];
  gradient?: (dys: (tf.Tensor | null)[]) => Record<string, () => tf.Tensor>;
  saved?: tf.Tensor[];
}

type Gradients = (
  f: () => tf.Tensor,
  xs: tf.Tensor[],
  dy?: tf.Tensor,
  allowNoGradients?: boolean,
) => { value: tf.Tensor; grads: tf.Tensor[] };

interface EnginePrivate {
  state: { activeTape: TapeNode[] | null; gradientDepth: number };
  scopedRun<T>(start: () => void, end: () => void, f: () => T): T;
  startTape(): void;
  endTape(): void;
  tidy<T extends tf.TensorContainer>(nameOrFn: string | (() => T), fn?: () => T): T;
  gradients: Gradients;
}

const engine = () => tf.engine() as unknown as EnginePrivate;
let original: Gradients | undefined;

/** Puts the freeing backward pass on tfjs's engine, or tfjs's own back (idempotent either way). */
export function setFreeingBackprop(on: boolean): void {
  const e = engine();
  if (!on) {
    if (original) [e.gradients, original] = [original, undefined];
    return;
  }
  if (original) return;
  for (const m of ['scopedRun', 'startTape', 'endTape', 'tidy', 'gradients'] as const)
    if (typeof e[m] !== 'function') throw new Error(`tfjs's engine has no ${m}(): core/backprop.ts needs updating for this tfjs`);
  if (typeof e.state.gradientDepth !== 'number')
    throw new Error("tfjs's engine state has no gradientDepth: core/backprop.ts needs updating for this tfjs");
  original = e.gradients;
  e.gradients = function (f, xs, dy, allowNoGradients = false) {
    // Nested (higher-order) gradients record onto an outer tape that may still need these tensors.
    if (this.state.gradientDepth > 0) return original!.call(this, f, xs, dy, allowNoGradients);
    const y = this.scopedRun(
      () => this.startTape(),
      () => this.endTape(),
      () => this.tidy('forward', f),
    );
    if (!(y instanceof tf.Tensor)) throw new Error('The result y returned by f() must be a tensor.');
    const tape = this.state.activeTape;
    if (!Array.isArray(tape)) throw new Error("tfjs's engine recorded no activeTape: core/backprop.ts needs updating for this tfjs");
    const path = pathFromXsToY(tape, xs, y);
    if (!allowNoGradients && path.length === 0)
      throw new Error('Cannot compute gradient of y=f(x) with respect to x: f must enclose every operation from x to y.');
    return this.tidy('backward', () => {
      const grads = backpropagate(path, y, dy ?? tf.onesLike(y), (g) => this.tidy(g));
      for (const node of tape) for (const t of node.saved ?? []) t.dispose();
      this.state.activeTape = null;
      return { value: y, grads: xs.map((x) => grads.get(x.id)!) };
    }) as { value: tf.Tensor; grads: tf.Tensor[] };
  };
}

/** The nodes on some path from an x to y, each with only its inputs that depend on an x (tfjs's own filter). */
function pathFromXsToY(tape: TapeNode[], xs: tf.Tensor[], y: tf.Tensor): TapeNode[] {
  const fromX = new Set(xs.map((x) => x.id));
  const nodesFromX = new Set<number>();
  for (const node of tape)
    if (Object.values(node.inputs).some((t) => fromX.has(t.id))) {
      nodesFromX.add(node.id);
      for (const o of node.outputs) fromX.add(o.id);
    }
  const toY = new Set([y.id]);
  const nodesToY = new Set<number>();
  for (const node of [...tape].reverse())
    if (node.outputs.some((o) => toY.has(o.id)) && Object.keys(node.inputs).length) {
      nodesToY.add(node.id);
      for (const t of Object.values(node.inputs)) toY.add(t.id);
    }
  return tape
    .filter((n) => nodesFromX.has(n.id) && nodesToY.has(n.id))
    .map((n) => ({ ...n, inputs: Object.fromEntries(Object.entries(n.inputs).filter(([, t]) => fromX.has(t.id))) }));
}

/**
 * Walks the path backwards accumulating gradients by tensor id. A gradient is held by every id it is stored under
 * and freed when the last one is done with it; the caller's `dy` and the xs' gradients are never freed here.
 */
function backpropagate(path: TapeNode[], y: tf.Tensor, dy: tf.Tensor, tidy: (f: () => tf.Tensor) => tf.Tensor): Map<number, tf.Tensor> {
  const grads = new Map<number, tf.Tensor>([[y.id, dy]]);
  const holders = new Map<tf.Tensor, number>([[dy, 1]]);
  const hold = (t: tf.Tensor) => holders.set(t, (holders.get(t) ?? 0) + 1);
  const release = (t: tf.Tensor) => {
    const n = holders.get(t)! - 1;
    if (n > 0) holders.set(t, n);
    else {
      holders.delete(t);
      if (t !== dy) t.dispose();
    }
  };
  for (const node of [...path].reverse()) {
    if (!node.gradient) throw new Error(`Cannot compute gradient: gradient function not found for ${node.kernelName}.`);
    const dys = node.outputs.map((o) => grads.get(o.id) ?? null);
    const inputGrads = node.gradient(dys);
    for (const [name, x] of Object.entries(node.inputs)) {
      const dx = tidy(() => inputGrads[name]!());
      if (dx.dtype !== 'float32' || !tf.util.arraysEqual(dx.shape, x.shape))
        throw new Error(
          `Error in gradient for op ${node.kernelName}: input '${name}' got a ${dx.dtype} gradient of shape [${dx.shape}], expected float32 [${x.shape}]`,
        );
      const current = grads.get(x.id);
      const sum = current ? tf.add(current, dx) : dx;
      if (current) {
        release(current);
        if (!holders.has(dx) && dx !== dy) dx.dispose();
      }
      grads.set(x.id, sum);
      hold(sum);
    }
    for (const o of node.outputs) {
      const g = grads.get(o.id);
      if (!g) continue;
      grads.delete(o.id);
      release(g);
    }
    for (const t of node.saved ?? []) t.dispose();
  }
  return grads;
}
