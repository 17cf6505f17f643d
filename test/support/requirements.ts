import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { beforeEach, describe } from 'vitest';
import { getCurrentSuite, getHooks } from 'vitest/suite';
import { blasCandidates } from '../../core/blas.js';
import { isExecutable } from '../../core/engine.js';
import { nativeAddon } from '../../core/native.js';

// The system components some tests need beyond `npm ci`, found once per process. Where one is missing a plain
// `npm test` skips those tests (test/support/requirements-summary.ts names what to install); CI=true (.ci/run installs
// them all) makes each of them fail instead.

/** Debian's Python, whose python3-torch and python3-pil the scale-out trainer and the independent readers use. */
export const PYTHON = '/usr/bin/python3';
/** SwiftShader, the software Vulkan driver that Debian's chromium package ships. */
export const SWIFTSHADER_ICD = '/usr/lib/chromium/vk_swiftshader_icd.json';
const VULKAN_LOADERS = ['x86_64-linux-gnu', 'aarch64-linux-gnu', ''].map((d) => join('/usr/lib', d, 'libvulkan.so.1'));
const BROWSERS = ['chromium', 'chromium-browser', 'google-chrome'];

/** A component as found here: its path, or why it is missing and the Debian packages that provide it. */
export interface Component {
  name: string;
  path?: string;
  missing?: string;
  install?: string[];
}

const PROBES = {
  chromium,
  vulkan,
  torch: () => pythonModule('PyTorch', 'torch', 'python3-torch'),
  pillow: () => pythonModule('Pillow', 'PIL', 'python3-pil'),
  sklearn: () => pythonModule('scikit-learn', 'sklearn', 'python3-sklearn'),
  blas: systemBlas,
} satisfies Record<string, () => Component>;
export type Need = keyof typeof PROBES;

declare module 'vitest' {
  interface TaskMeta {
    /** On a gated suite whose components are missing: which, for test/support/requirements-summary.ts in the main process. */
    missing?: Component[];
  }
}

const found = new Map<Need, Component>();
export function component(need: Need): Component {
  if (!found.has(need)) found.set(need, PROBES[need]());
  return found.get(need)!;
}

/** The path of a component the running test needs; only gated tests run, so there it is present. */
export function pathOf(need: Need): string {
  const c = component(need);
  if (!c.path) throw new Error(explain([c]));
  return c.path;
}

/** What is missing and what installs it, in one line. */
export function explain(missing: Component[]): string {
  return missing.map((c) => `${c.name} is missing (${c.missing}): apt-get install ${c.install!.join(' ')}`).join('; ');
}

/**
 * `describe` for tests that need `needs`. Where one is missing the block is skipped, or under CI=true each of its
 * tests fails naming it; then the block's own beforeAll/afterAll hooks do not run, since they would use it.
 */
export function describeWith(...needs: Need[]): (name: string, fn: () => void) => void {
  return (name, fn) => {
    const missing = needs.map(component).filter((c) => c.missing);
    if (missing.length === 0) return describe(name, fn);
    const ci = process.env.CI === 'true';
    (ci ? describe : describe.skip)(name, () => {
      const suite = getCurrentSuite().suite!;
      suite.meta.missing = missing;
      if (!ci) return fn();
      const error = `CI=true, but ${explain(missing)}`;
      beforeEach(() => {
        throw new Error(error);
      });
      fn();
      const hooks = getHooks(suite);
      hooks.beforeAll.length = hooks.afterAll.length = 0;
    });
  };
}

/** CHROME_PATH if set, else the first of BROWSERS on PATH (Debian's /usr/bin/chromium, or another distribution's). */
function chromium(): Component {
  const name = 'Chromium';
  const set = process.env.CHROME_PATH;
  if (set)
    return isExecutable(set)
      ? { name, path: set }
      : { name, missing: `CHROME_PATH=${set} is not an executable file; fix or unset it`, install: ['chromium'] };
  const dirs = (process.env.PATH ?? '').split(delimiter).filter(Boolean);
  const path = BROWSERS.flatMap((b) => dirs.map((d) => join(d, b))).find(isExecutable);
  if (path) return { name, path };
  return { name, missing: `CHROME_PATH is not set and none of ${BROWSERS.join(', ')} is on PATH`, install: ['chromium'] };
}

/** The Vulkan loader and SwiftShader's driver manifest: webgpu (Dawn) on a CPU. Its path is the manifest's. */
function vulkan(): Component {
  const name = 'Vulkan with SwiftShader';
  const lacks: [string, string][] = [];
  if (!VULKAN_LOADERS.some((f) => existsSync(f))) lacks.push(['no libvulkan.so.1', 'libvulkan1']);
  if (!existsSync(SWIFTSHADER_ICD)) lacks.push([`no ${SWIFTSHADER_ICD}`, 'chromium']);
  if (lacks.length === 0) return { name, path: SWIFTSHADER_ICD };
  return { name, missing: lacks.map(([why]) => why).join(', '), install: lacks.map(([, pkg]) => pkg) };
}

/** A system BLAS the native addon can open (core/blas.ts): its file. */
function systemBlas(): Component {
  const [name, install] = ['a system BLAS', ['libopenblas0-pthread']];
  const addon = nativeAddon();
  if (!addon) return { name, missing: 'the native addon is not built', install };
  if (!addon.blasPath()) blasCandidates().find((path) => addon.openBlas(path));
  const path = addon.blasPath();
  return path ? { name, path } : { name, missing: `none of ${blasCandidates().join(', ')} opens`, install };
}

function pythonModule(name: string, module: string, pkg: string): Component {
  if (!isExecutable(PYTHON)) return { name, missing: `no ${PYTHON}`, install: [pkg] };
  const r = spawnSync(PYTHON, ['-c', `import ${module}`], { encoding: 'utf8' });
  if (r.status === 0) return { name, path: PYTHON };
  return { name, missing: `${PYTHON} cannot import ${module}`, install: [pkg] };
}
