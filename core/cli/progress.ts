import type { FinetuneResult, ProbeResult } from '../store/store.js';

/** Terminal status: one line rewritten in place on a TTY, or a plain line every few seconds elsewhere. */
export class StatusLine {
  private last = 0;
  private width = 0;

  constructor(private readonly out: NodeJS.WriteStream = process.stderr) {}

  update(text: string, force = false): void {
    if (this.out.isTTY) {
      this.out.write(`\r${text.padEnd(this.width)}`);
      this.width = text.length;
    } else if (force || Date.now() - this.last > 5000) {
      this.out.write(text + '\n');
      this.last = Date.now();
    }
  }

  /** Ends the in-place line so that the next output starts on a fresh one. */
  done(): void {
    if (this.out.isTTY && this.width) this.out.write('\n');
    this.width = 0;
  }
}

export function duration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h ? `${h}h${String(m).padStart(2, '0')}m` : m ? `${m}m${String(s % 60).padStart(2, '0')}s` : `${s}s`;
}

/** A fine-tune's result beside its baselines, as the summary and `runs show` print it. */
export function resultLine(r: FinetuneResult): string {
  const probe = r.probeTop1 === null ? '' : `, from its linear probe's ${pct(r.probeTop1)} %`;
  const top1 = `validation top-1 ${pct(r.top1)} % (best checkpoint${probe})`;
  if (!r.baselines) return `${top1}; no baselines (--no-baselines)`;
  const { pixels, init } = r.baselines;
  return `${top1}; baselines on the same split: raw pixels (logistic probe) ${pct(pixels)} %, no pretraining (same recipe from the initialisation) ${pct(init)} %`;
}

export const pct = (f: number) => (100 * f).toFixed(1);
const signed = (points: number) => `${points >= 0 ? '+' : ''}${points.toFixed(1)}`;

/** A probe's three numbers, and what pretraining bought over each baseline. */
export function probeSummary(p: ProbeResult): string {
  const { pixels, init } = p.baselines;
  return (
    `linear probe top-1 ${pct(p.top1)} % (${p.features} features, ${p.dims}-d, λ ${p.lambda}, hold-out ${pct(p.holdoutTop1)} %, ${p.seconds.toFixed(1)} s); ` +
    `no pretraining ${pct(init)} %, raw pixels ${pct(pixels)} %\n` +
    `pretraining: ${signed(100 * (p.top1 - init))} points over no pretraining, ${signed(100 * (p.top1 - pixels))} vs raw pixels`
  );
}
