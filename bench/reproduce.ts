// npx tsx bench/reproduce.ts [--budgets S,S] [--seeds N] [--out DIR] [--blr LR] [--finetune-epochs E] [--quick]
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
    quick: { type: 'boolean', default: false },
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
// Pretraining: a 0.1-epoch warmup (31 steps), then a cosine over EPOCHS that no budget ends (so the lr is ~constant).
const EPOCHS = 400;
// Fine-tuning takes the small-data recipe's step budget (core/recipe.ts), unless told; --quick one epoch.
const FINETUNE_EPOCHS = QUICK ? '1' : values['finetune-epochs'];
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
}

/** Runs the CLI with --json; `onEvent` may return a budget in ms after which the command gets SIGINT (Ctrl-C: checkpoint, pause). */
function cli(args: string[], onEvent: (e: CliEvent) => number | void = () => {}): Promise<CliEvent[]> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, [CLI, ...args, '--json'], { stdio: ['ignore', 'pipe', 'inherit'] });
    const events: CliEvent[] = [];
    let rest = '';
    child.stdout.on('data', (chunk: Buffer) => {
      const lines = (rest + chunk).split('\n');
      rest = lines.pop()!;
      for (const l of lines.filter((l) => l.startsWith('{'))) {
        const e = JSON.parse(l) as CliEvent;
        events.push(e);
        const ms = onEvent(e);
        if (ms !== undefined) setTimeout(() => child.kill('SIGINT'), ms);
      }
    });
    child.on('error', fail);
    child.on('close', (code) => (code === 0 ? done(events) : fail(new Error(`localmim ${args[0]} exited with ${code}`))));
  });
}

const shape = ['--model', MODEL.size, '--img', `${MODEL.img}`, '--patch', `${MODEL.patch}`];

/** Pretrains for `budget` seconds of training (from the start event, so indexing is not counted); returns run id and steps. */
async function pretrain(home: string, preset: string, seed: number, budget: number) {
  const args = ['pretrain', '--home', home, '--data', join(OUT, 'unlabeled'), '--preset', preset, ...shape];
  args.push('--batch', `${MODEL.batch}`, '--epochs', `${EPOCHS}`, '--warmup', '0.1', '--seed', `${seed}`);
  if (values.blr) args.push('--blr', values.blr);
  const events = await cli(args, (e) => (e.type === 'start' ? budget * 1000 : undefined));
  const end = events.find((e) => e.type === 'end')!;
  return { runId: end.runId, steps: end.step, backend: events.find((e) => e.type === 'start')!.backend! };
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
      const finetune = await evaluate(home, p.runId, seed, 'finetune');
      r.probe.push(probe.top1!);
      r.finetune.push(finetune.top1!);
      // The same split and seed give each method the same baselines; the table keeps one per seed.
      if (m === METHODS[0]) {
        pixels.probe.push(probe.baselines!.pixels);
        init.probe.push(probe.baselines!.init);
        init.finetune.push(finetune.baselines!.init);
      }
      const gap = r.knn.at(-1)! - probe.top1!;
      if (gap > 0.03) checks.push(`${m.name}, ${budget} s, seed ${seed}: probe ${points(probe.top1!)} is ${points(gap)} points below kNN`);
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
  for (const budget of BUDGETS) {
    const m = await measure(home, budget, checks);
    backend ||= m.backend;
    lines.push(...table(budget, m.rows));
  }
  const cpu = cpus();
  const out = [
    `${SEEDS} seed(s); ${cpu[0]?.model} × ${cpu.length} cores; backend ${backend}; pretraining blr ` +
      `${values.blr ?? 'each preset’s (LocalMIM 2e-4, MAE 1.5e-4)'}; fine-tuning ${FINETUNE_EPOCHS ? `${FINETUNE_EPOCHS} epochs` : 'the small-data recipe'}` +
      `; ${((performance.now() - started) / 60000).toFixed(1)} min in all. The raw-pixel and no-pretraining rows are the ` +
      'baselines the probe and fine-tuning report on the same split (no fine-tuning of raw pixels: it is the probe).',
    '',
    ...lines,
    checks.length
      ? `Checks not met:\n${checks.map((c) => `- ${c}`).join('\n')}`
      : 'Checks met: every probe within 3 points of its kNN, every fine-tune at or above its probe.',
  ].join('\n');
  console.log(out);
  writeFileSync(join(OUT, 'results.md'), out + '\n');
}

await main();
