import { existsSync, readdirSync } from 'node:fs';

/** What `doctor`, the run record and the memory check need to know of a WebGPU adapter. */
export interface Adapter {
  vendor: string;
  architecture: string;
  description: string;
  /** A CPU emulation (SwiftShader, llvmpipe/lavapipe): correct, but slower than the CPU backends. */
  software: boolean;
  maxBufferSize: number;
  maxStorageBufferBindingSize: number;
  maxComputeWorkgroupStorageSize: number;
}

/** Where the Vulkan loader looks for drivers on Linux (unless VK_ICD_FILENAMES / VK_DRIVER_FILES say otherwise). */
const ICD_DIRS = ['/usr/share/vulkan/icd.d', '/etc/vulkan/icd.d', '/usr/local/share/vulkan/icd.d'];

/** On Linux Dawn needs a Vulkan driver; without one it only prints warnings. Undefined: worth trying. */
function vulkanMissing(): string | undefined {
  if (process.platform !== 'linux' || process.env.VK_ICD_FILENAMES || process.env.VK_DRIVER_FILES) return undefined;
  const found = ICD_DIRS.some((d) => existsSync(d) && readdirSync(d).some((f) => f.endsWith('.json')));
  return found ? undefined : `no Vulkan driver installed (no ICD in ${ICD_DIRS.join(', ')}): install your GPU's Vulkan driver`;
}

const SOFTWARE = /swiftshader|llvmpipe|lavapipe|software rasterizer/i;

let opened: Promise<Adapter | string> | undefined;

/**
 * Brings up Dawn's Node binding (the `webgpu` package) as `navigator.gpu`, once per process (a second instance
 * would orphan the first one's device), and asks for the fastest adapter. Returns it, or why there is none.
 */
export const openAdapter = (): Promise<Adapter | string> => (opened ??= open());

async function open(): Promise<Adapter | string> {
  const missing = vulkanMissing();
  if (missing) return missing;
  let dawn: { create(flags: string[]): GPULike; globals: object };
  try {
    dawn = (await import('webgpu')) as unknown as typeof dawn;
  } catch (err) {
    return `the webgpu package (Dawn) did not load: ${String((err as Error).message).split('\n')[0]}`;
  }
  Object.assign(globalThis, dawn.globals);
  const gpu = dawn.create([]);
  // tfjs-backend-webgpu looks for `navigator.gpu`; Node ≥ 21 has a navigator of its own to extend.
  const navigator = (globalThis as { navigator?: object }).navigator;
  Object.defineProperty(globalThis, 'navigator', { value: Object.assign(navigator ?? {}, { gpu }), configurable: true, writable: true });
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) return 'Dawn found no WebGPU adapter (no GPU, or its Vulkan/Metal/D3D12 driver is missing)';
  const { vendor, architecture, description } = adapter.info;
  const l = adapter.limits;
  return {
    vendor,
    architecture,
    description,
    software: adapter.isFallbackAdapter === true || SOFTWARE.test(`${vendor} ${architecture} ${description}`),
    maxBufferSize: l.maxBufferSize,
    maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
    maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
  };
}

export const describeAdapter = (a: Adapter) =>
  `${[a.vendor, a.architecture, a.description].filter(Boolean).join(' ')}${a.software ? ' (software)' : ''}, ` +
  `max buffer ${(a.maxBufferSize / 2 ** 20).toFixed(0)} MiB, storage binding ${(a.maxStorageBufferBindingSize / 2 ** 20).toFixed(0)} MiB, ` +
  `workgroup storage ${(a.maxComputeWorkgroupStorageSize / 1024).toFixed(0)} KiB`;

interface GPULike {
  requestAdapter(o?: { powerPreference?: string }): Promise<{
    info: { vendor: string; architecture: string; description: string };
    isFallbackAdapter?: boolean;
    limits: { maxBufferSize: number; maxStorageBufferBindingSize: number; maxComputeWorkgroupStorageSize: number };
  } | null>;
}
