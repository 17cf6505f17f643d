import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { RgbImage } from '../../core/image.js';

/** Reference outputs of the official code, stored in `test/golden/` (see its README for provenance and tolerances). */
export function readGolden<T>(file: string): T {
  const path = fileURLToPath(new URL(`../golden/${file}`, import.meta.url));
  return JSON.parse(readFileSync(path, 'utf8')) as T;
}

export function goldenImage(img: { height: number; width: number; pixels_u8_hwc: number[] }): RgbImage {
  return { height: img.height, width: img.width, data: Uint8Array.from(img.pixels_u8_hwc) };
}

/** Largest `|a − b| − tol(i)` over all entries; ≤ 0 means every entry is within its tolerance. */
export function worstExcess(a: ArrayLike<number>, b: ArrayLike<number>, tol: (i: number) => number): { excess: number; index: number } {
  if (a.length !== b.length) throw new Error(`length ${a.length} ≠ ${b.length}`);
  let worst = { excess: -Infinity, index: -1 };
  for (let i = 0; i < a.length; i++) {
    const excess = Math.abs(a[i]! - b[i]!) - tol(i);
    if (!(excess <= worst.excess)) worst = { excess, index: i };
  }
  return worst;
}

/** The golden files' weights (forward_tiny.json, swin_tiny.json): base = sin(0.731·k + 0.0173·h), h = Σ UTF-8 bytes of the name. */
export function formulaValues(name: string, shape: number[]): Float32Array {
  const h = [...new TextEncoder().encode(name)].reduce((a, b) => a + b, 0);
  const n = shape.reduce((a, b) => a * b, 1);
  const scale = name.endsWith('.weight') && shape.length === 1 ? [1, 0.1] : name.endsWith('.bias') ? [0, 0.02] : [0, 0.05];
  return Float32Array.from({ length: n }, (_, k) => scale[0]! + scale[1]! * Math.sin(0.731 * k + 0.0173 * h));
}
