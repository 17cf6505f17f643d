// npx tsx bench/reproduce.ts [--budgets S,S] [--seeds N] [--finetune-seeds N] [--out DIR] [--blr LR] [--finetune-epochs E] [--quick]
// npx tsx bench/reproduce.ts --curve LR,LR [--budgets S]: live kNN and probe top-1 against wall-clock, per method and blr
// Issue 29's reproduction on real images (docs/results.md): LocalMIM-HOG, MAE, no pretraining and the raw pixels at equal
// wall-clock pretraining budgets on unlabeled Fashion-MNIST, each scored on a small labeled subset by weighted kNN, the
// logistic linear probe and small-data fine-tuning (LP-FT), every score beside its baselines on the same split.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { gunzipSync } from 'node:zlib';
import sharp from 'sharp';
import { embedItems, knnScore, liveBackbone } from '../core/analysis/knn.js';
import type { Embedded } from '../core/analysis/linear-probe.js';
import { initBackend } from '../core/backend.js';
import { parseRunConfig } from '../core/config.js';
import { presetFor } from '../core/presets.js';
import { pixelRows } from '../core/runs/baselines.js';
import { decodeSafetensors } from '../core/safetensors.js';
import { pretrainModel } from '../core/train/pretrain.js';

const { values } = parseArgs({
  options: {
    budgets: { type: 'string', default: '240,900' },
    seeds: { type: 'string', default: '3' },
    out: { type: 'string', default: '.localmim/fashion-mnist' },
    blr: { type: 'string' },
    'finetune-epochs': { type: 'string' },
    'finetune-seeds': { type: 'string' },
    quick: { type: 'boolean', default: false },
    curve: { type: 'string' },
  },
});
const BUDGETS = values.budgets.split(',').map(Number);
const SEEDS = Number(values.seeds);
const OUT = resolve(values.out);
const QUICK = values.quick;
const SRC = '/usr/share/datasets/fashion-mnist';
const CLASSES = ['T-shirt', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle-boot'];
const N_UNLABELED = 10_000; // the first training images; the labeled subset comes from the rest
const PER_CLASS = { train: 50, val: 100 }; // labeled training images per class; test (t10k) images per class
const MODEL = { size: 'vit-tiny', img: 32, patch: 4, batch: 32 };
// Pretraining: by default each run's schedule is the product's, fitted to its budget (`--minutes`: whole epochs, 5 %
// warmup, blr √-scaled to the batch). With a blr (--blr, and the curve's), a 0.1-epoch warmup (31 steps) and then a
// cosine over EPOCHS that no budget ends, so the lr is about constant: the rates compare at the same schedule.
const EPOCHS = 400;
// Fine-tuning takes the small-data recipe's step budget (core/recipe.ts), unless told; --quick one epoch.
const FINETUNE_EPOCHS = QUICK ? '1' : values['finetune-epochs'];
// Fine-tuning is the costly evaluation (minutes per run on a CPU): the first N seeds get it (default all).
const FINETUNE_SEEDS = Number(values['finetune-seeds'] ?? SEEDS);
const METHODS = [
  { name: 'LocalMIM-HOG', preset: 'localmim-hog' },
  { name: 'MAE', preset: 'mae' },
] as const;
const CLI = resolve('bin/localmim.js');

/** An idx file (big-endian header: magic, then one count per dimension): its dimensions and its bytes. */
function readIdx(file: string): { dims: number[]; data: Buffer } {
  const b = gunzipSync(readFileSync(file));
  const nd = b[3]!;
  const dims = [...Array(nd).keys()].map((i) => b.readUInt32BE(4 + 4 * i));
  return { dims, data: b.subarray(4 + 4 * nd) };
}

/** Writes the PNG folders once: unlabeled/, labeled/train/<class>/ (from the training set) and labeled/val/<class>/ (t10k). */
async function prepare(): Promise<void> {
  if (existsSync(join(OUT, 'ready'))) return;
  const load = (split: string) => {
    const images = readIdx(join(SRC, `${split}-images-idx3-ubyte.gz`));
    const labels = readIdx(join(SRC, `${split}-labels-idx1-ubyte.gz`));
    const [, h, w] = images.dims as [number, number, number];
    return {
      n: labels.dims[0]!,
      label: (i: number) => labels.data[i]!,
      pixels: (i: number) => images.data.subarray(i * h * w, (i + 1) * h * w),
      h,
      w,
    };
  };
  const png = (s: ReturnType<typeof load>, i: number, file: string) =>
    sharp(s.pixels(i), { raw: { width: s.w, height: s.h, channels: 1 } })
      .png()
      .toFile(file);
  const train = load('train');
  mkdirSync(join(OUT, 'unlabeled'), { recursive: true });
  for (let i = 0; i < N_UNLABELED; i++) await png(train, i, join(OUT, 'unlabeled', `${String(i).padStart(5, '0')}.png`));
  const subset = async (s: ReturnType<typeof load>, from: number, perClass: number, dir: string) => {
    const counts = new Array(CLASSES.length).fill(0);
    for (const c of CLASSES) mkdirSync(join(OUT, 'labeled', dir, c), { recursive: true });
    for (let i = from; i < s.n && counts.some((n) => n < perClass); i++) {
      const y = s.label(i);
      if (counts[y] >= perClass) continue;
      counts[y]++;
      await png(s, i, join(OUT, 'labeled', dir, CLASSES[y]!, `${i}.png`));
    }
  };
  await subset(train, N_UNLABELED, PER_CLASS.train, 'train');
  await subset(load('t10k'), 0, PER_CLASS.val, 'val');
  writeFileSync(join(OUT, 'ready'), '');
}

/** The fields of the CLI's JSON events this script reads. */
interface CliEvent {
  type: string;
  runId: number;
  step: number;
  backend?: string;
  top1?: number;
  probeTop1?: number | null;
  baselines?: { pixels: number; init: number } | null;
  /** kNN monitor events: how long the evaluation took. */
  seconds?: number;
  /** When it arrived (performance.now(), ms), and the seconds of training by then (pretraining). */
  at: number;
  trained?: number;
}

/**
 * Runs the CLI with --json; `onEvent` may return a time in ms after which the command gets SIGINT (Ctrl-C: checkpoint,
 * pause), replacing any earlier time until it is sent.
 */
function cli(args: string[], onEvent: (e: CliEvent) => number | void = () => {}): Promise<CliEvent[]> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, [CLI, ...args, '--json'], { stdio: ['ignore', 'pipe', 'inherit'] });
    const events: CliEvent[] = [];
    let rest = '';
    let timer: NodeJS.Timeout | undefined;
    let stopping = false;
    child.stdout.on('data', (chunk: Buffer) => {
      const lines = (rest + chunk).split('\n');
      rest = lines.pop()!;
      for (const l of lines.filter((l) => l.startsWith('{'))) {
        const e = { ...JSON.parse(l), at: performance.now() } as CliEvent;
        events.push(e);
        const ms = onEvent(e);
        if (ms === undefined || stopping) continue;
        clearTimeout(timer);
        // Once: a second Ctrl-C stops the CLI without its checkpoint.
        timer = setTimeout(() => ((stopping = true), child.kill('SIGINT')), Math.max(0, ms));
      }
    });
    child.on('error', fail);
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0) done(events);
      else fail(new Error(`localmim ${args[0]} exited with ${code}`));
    });
  });
}

const shape = ['--model', MODEL.size, '--img', `${MODEL.img}`, '--patch', `${MODEL.patch}`];

/**
 * Pretrains for `budget` seconds of training, counted from the start event (indexing not counted) less the time the
 * kNN monitor takes (the curve's), so a monitored run trains as long as an unmonitored one. Each event gets `trained`,
 * the training seconds at its arrival.
 */
async function pretrain(home: string, preset: string, seed: number, budget: number, blr = values.blr, extra: string[] = []) {
  const args = ['pretrain', '--home', home, '--data', join(OUT, 'unlabeled'), '--preset', preset, ...shape];
  args.push('--batch', `${MODEL.batch}`, '--seed', `${seed}`, ...extra);
  args.push(...(blr ? ['--epochs', `${EPOCHS}`, '--warmup', '0.1', '--blr', blr] : ['--minutes', `${budget / 60}`]));
  let started = 0;
  let monitor = 0;
  const events = await cli(args, (e) => {
    if (e.type === 'start') started = e.at;
    if (!started) return undefined;
    if (e.type === 'knn') monitor += 1000 * e.seconds!;
    e.trained = (e.at - started - monitor) / 1000;
    return e.type === 'start' || e.type === 'knn' ? 1000 * (budget - e.trained) : undefined;
  });
  const [start, end] = [events.find((e) => e.type === 'start')!, events.find((e) => e.type === 'end')!];
  return { runId: end.runId, steps: end.step, backend: start.backend!, events };
}

/**
 * Issue 29's curve: each method at each base learning rate for the first budget, seed 0, with the kNN monitor scoring
 * the labeled validation images (half reference, half query; kNN and the logistic probe) every 100 steps: top-1 against
 * the seconds of training (the monitor's own time not counted).
 */
async function curve(home: string, blrs: string[]): Promise<string[]> {
  const budget = BUDGETS[0]!;
  const at = [0, 0.25, 0.5, 0.75, 1].map((f) => Math.round(f * budget));
  const lines = [
    `### kNN / probe top-1 (%) after t seconds of training (the kNN monitor every 100 steps on labeled/val, half ` +
      'reference, half query; its own time not counted)',
    '',
    `| method | blr | steps | ${at.map((t) => `t = ${t}`).join(' | ')} |`,
    `|---|---|---|${at.map(() => '---').join('|')}|`,
  ];
  for (const m of METHODS)
    for (const blr of blrs) {
      console.error(`curve: ${m.name}, blr ${blr}, ${budget} s`);
      const p = await pretrain(home, m.preset, 0, budget, blr, ['--probe-data', join(OUT, 'labeled', 'val'), '--knn-every', '100']);
      const knn = p.events.filter((e) => e.type === 'knn');
      // The monitor scores at step 0 and when the run stops (its checkpoint), just after the budget: both columns exact.
      const last = (t: number) => (t === 0 ? knn[0] : t === budget ? knn.at(-1) : knn.findLast((e) => e.trained! <= t));
      const cellAt = (t: number) => {
        const e = last(t);
        return e ? `${(100 * e.top1!).toFixed(1)} / ${(100 * (e.probeTop1 ?? NaN)).toFixed(1)} (step ${e.step})` : '—';
      };
      lines.push(`| ${m.name} | ${blr} | ${p.steps} | ${at.map(cellAt).join(' | ')} |`);
    }
  return [...lines, ''];
}

/** The run's last event of `type` (`probe` or `finetune`): its top-1, the probe it started from and the baselines. */
async function evaluate(home: string, runId: number, seed: number, type: 'probe' | 'finetune'): Promise<CliEvent> {
  const args = ['finetune', '--home', home, '--data', join(OUT, 'labeled'), '--from', `${runId}`, '--seed', `${seed}`];
  if (type === 'probe') args.push('--linear-probe');
  else if (FINETUNE_EPOCHS) args.push('--epochs', FINETUNE_EPOCHS);
  const result = (await cli(args)).findLast((e) => e.type === type);
  if (!result?.baselines) throw new Error(`finetune --from ${runId}: no ${type} event with baselines`);
  return result;
}

/** A run's features of a labeled folder via `localmim embed`, with the class indices from its paths file. */
async function embedRun(home: string, runId: number, split: string): Promise<Embedded> {
  const out = join(home, `embed-${runId}-${split}.safetensors`);
  await cli(['embed', `${runId}`, '--home', home, '--data', join(OUT, 'labeled', split), '--out', out]);
  const t = decodeSafetensors(readFileSync(out)).tensors.get('features')!;
  const rows = readFileSync(out.replace(/\.safetensors$/, '.jsonl'), 'utf8')
    .trim()
    .split('\n');
  return { features: Float32Array.from(t.values), dim: t.shape[1]!, labels: rows.map((r) => CLASSES.indexOf(JSON.parse(r).label)) };
}

/** A labeled folder's images, sorted, with their class indices. */
const labeledItems = (split: string) => {
  const dir = join(OUT, 'labeled', split);
  return CLASSES.flatMap((c, label) => readdirSorted(join(dir, c)).map((f) => ({ abs: join(dir, c, f), hash: `${c}/${f}`, label })));
};

/** The untrained backbone, as a pretraining run with this seed starts (and as the kNN monitor scores it at step 0). */
async function embedInit(seed: number, split: string): Promise<Embedded> {
  await initBackend();
  const config = parseRunConfig({
    model: { size: MODEL.size, ...presetFor('localmim-hog', MODEL.size).model, imgSize: MODEL.img, patchSize: MODEL.patch },
  });
  const model = pretrainModel(config.model, seed);
  const items = labeledItems(split);
  const { features, dim } = await embedItems(liveBackbone(model.params, config.model), config.model, items);
  model.params.dispose();
  return { features, dim, labels: items.map((it) => it.label) };
}

/** The raw pixels at the model's input size, as the pixel baselines see them. */
async function embedPixels(split: string): Promise<Embedded> {
  const items = labeledItems(split);
  return { ...(await pixelRows(items, MODEL.img)), labels: items.map((it) => it.label) };
}

const readdirSorted = (dir: string) => readdirSync(dir).sort();

const stat = (xs: number[]) => {
  const m = xs.reduce((a, b) => a + b, 0) / xs.length;
  const sd = xs.length > 1 ? Math.sqrt(xs.reduce((a, b) => a + (b - m) ** 2, 0) / (xs.length - 1)) : 0;
  return { m, sd };
};
const pct = (xs: number[]) => {
  const { m, sd } = stat(xs.map((x) => 100 * x));
  return `${m.toFixed(1)} ± ${sd.toFixed(1)}`;
};

type Scores = { steps: number[]; knn: number[]; probe: number[]; finetune: number[] };
const scores = (): Scores => ({ steps: [], knn: [], probe: [], finetune: [] });
const knnTop1 = async (embed: (split: string) => Promise<Embedded>) =>
  knnScore(await embed('train'), await embed('val'), CLASSES.length).top1;

/** One budget's rows: each method's runs, and the raw pixels and the initialisation as their evaluations saw them. */
async function measure(home: string, budget: number, checks: string[]): Promise<{ rows: Map<string, Scores>; backend: string }> {
  const rows = new Map<string, Scores>(['raw pixels', 'no pretraining', ...METHODS.map((m) => m.name)].map((n) => [n, scores()]));
  const [pixels, init] = [rows.get('raw pixels')!, rows.get('no pretraining')!];
  let backend = '';
  for (let seed = 0; seed < SEEDS; seed++) {
    pixels.knn.push(await knnTop1(embedPixels));
    init.knn.push(await knnTop1((split) => embedInit(seed, split)));
    for (const m of METHODS) {
      console.error(`budget ${budget} s, seed ${seed}: ${m.name}`);
      const r = rows.get(m.name)!;
      const p = await pretrain(home, m.preset, seed, budget);
      backend ||= p.backend;
      r.steps.push(p.steps);
      r.knn.push(await knnTop1((split) => embedRun(home, p.runId, split)));
      const probe = await evaluate(home, p.runId, seed, 'probe');
      r.probe.push(probe.top1!);
      // The same split and seed give each method the same baselines; the table keeps one per seed.
      if (m === METHODS[0]) {
        pixels.probe.push(probe.baselines!.pixels);
        init.probe.push(probe.baselines!.init);
      }
      const gap = r.knn.at(-1)! - probe.top1!;
      if (gap > 0.03) checks.push(`${m.name}, ${budget} s, seed ${seed}: probe ${points(probe.top1!)} is ${points(gap)} points below kNN`);
      const got = { budget, seed, method: m.name, steps: p.steps, knn: r.knn.at(-1), probe: probe.top1, baselines: probe.baselines };
      console.error(JSON.stringify(got));
      if (seed >= FINETUNE_SEEDS) continue;
      const finetune = await evaluate(home, p.runId, seed, 'finetune');
      r.finetune.push(finetune.top1!);
      if (m === METHODS[0]) init.finetune.push(finetune.baselines!.init);
      console.error(JSON.stringify({ ...got, finetune: finetune.top1, finetuneBaselines: finetune.baselines }));
      if (finetune.top1! < (finetune.probeTop1 ?? 0))
        checks.push(
          `${m.name}, ${budget} s, seed ${seed}: fine-tune ${points(finetune.top1!)} below its probe ${points(finetune.probeTop1!)}`,
        );
    }
  }
  return { rows, backend };
}

const points = (x: number) => `${(100 * x).toFixed(1)} %`;
const cell = (xs: number[]) => (xs.length ? pct(xs) : '—');

function table(budget: number, rows: Map<string, Scores>): string[] {
  return [
    `### ${budget} s of pretraining per run`,
    '',
    '| method | pretraining steps | kNN top-1 (%) | linear probe top-1 (%) | fine-tune top-1 (%) |',
    '|---|---|---|---|---|',
    ...[...rows].map(([name, r]) => {
      const s = stat(r.steps.length ? r.steps : [0]);
      return `| ${name} | ${s.m.toFixed(0)} ± ${s.sd.toFixed(0)} | ${cell(r.knn)} | ${cell(r.probe)} | ${cell(r.finetune)} |`;
    }),
    '',
  ];
}

async function main(): Promise<void> {
  if (!existsSync(join(SRC, 't10k-labels-idx1-ubyte.gz'))) {
    console.error(`Fashion-MNIST not found in ${SRC}: apt-get install dataset-fashion-mnist`);
    process.exit(2);
  }
  const started = performance.now();
  await prepare();
  const home = join(OUT, `runs-${new Date().toISOString().replace(/[:.]/g, '-')}`);
  const checks: string[] = [];
  const lines: string[] = [];
  let backend = '';
  if (values.curve) lines.push(...(await curve(home, values.curve.split(','))));
  else
    for (const budget of BUDGETS) {
      const m = await measure(home, budget, checks);
      backend ||= m.backend;
      lines.push(...table(budget, m.rows));
    }
  const cpu = cpus();
  const out = [
    `${SEEDS} seed(s); ${cpu[0]?.model} × ${cpu.length} cores; backend ${backend}; pretraining blr ` +
      `${values.blr ? `${values.blr} at a constant rate` : 'as the product fits it to the budget (docs/method.md#time-budget)'}; fine-tuning (${FINETUNE_SEEDS} seed(s)) ${FINETUNE_EPOCHS ? `${FINETUNE_EPOCHS} epochs` : 'the small-data recipe'}` +
      `; ${((performance.now() - started) / 60000).toFixed(1)} min in all. The raw-pixel and no-pretraining rows are the ` +
      'baselines the probe and fine-tuning report on the same split (no fine-tuning of raw pixels: it is the probe).',
    '',
    ...lines,
    values.curve
      ? ''
      : checks.length
        ? `Checks not met:\n${checks.map((c) => `- ${c}`).join('\n')}`
        : `Checks met: every probe within 3 points of its kNN${FINETUNE_SEEDS ? ', every fine-tune at or above its probe' : ''}.`,
  ].join('\n');
  console.log(out);
  writeFileSync(join(OUT, 'results.md'), out + '\n');
}

await main();
