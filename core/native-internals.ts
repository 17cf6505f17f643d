import * as tf from '@tensorflow/tfjs';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';

// Every reliance of the native path on tfjs-backend-wasm's private state, in one place; test/native.test.ts
// ('the wasm internals the native path reads') fails loudly when a tfjs upgrade changes them.

interface WasmPrivate {
  wasm: { HEAPU8: Uint8Array };
  dataIdMap: { get(id: tf.DataId): { memoryOffset: number; refCount: number } | undefined };
  incRef(id: tf.DataId): void;
}
const priv = (backend: BackendWasm) => backend as unknown as WasmPrivate;

/** A Float32Array over the `n` floats of `t` on the wasm heap: no copy. Valid until the next allocation may grow the heap. */
export const heapView = (backend: BackendWasm, t: tf.TensorInfo, n: number) =>
  new Float32Array(priv(backend).wasm.HEAPU8.buffer, priv(backend).dataIdMap.get(t.dataId)!.memoryOffset, n);

/** The backend's count of tensors sharing `t`'s memory. */
export const refCount = (backend: BackendWasm, t: tf.TensorInfo) => priv(backend).dataIdMap.get(t.dataId)?.refCount ?? 0;

/**
 * Identity sharing its input's memory, as tfjs's cpu backend and wasm's own Reshape do, instead of copying it:
 * the engine clones every tensor it saves for the backward pass through Identity.
 */
export function sharedIdentity(args: { inputs: { x: tf.TensorInfo }; backend: BackendWasm }): tf.TensorInfo {
  const { x } = args.inputs;
  priv(args.backend).incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
}
