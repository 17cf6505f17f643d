import { peakLr, type OptimConfig } from '../config.js';

/**
 * Learning rate at fractional epoch `e` (docs/method.md#optimizer-and-schedule), evaluated every iteration rather than every epoch:
 * linear warmup from 0, then half-cosine from the peak down to `minLr`.
 */
export function lrAt(e: number, o: OptimConfig): number {
  const peak = peakLr(o);
  if (e < o.warmupEpochs) return (peak * e) / o.warmupEpochs;
  const progress = Math.min(1, (e - o.warmupEpochs) / Math.max(o.epochs - o.warmupEpochs, 1e-12));
  return o.minLr + (peak - o.minLr) * 0.5 * (1 + Math.cos(Math.PI * progress));
}
