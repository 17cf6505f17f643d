// npx tsx bench/reproduce.ts [--budget S] [--seeds N] [--out DIR] [--blr LR] [--probe-epochs E] [--finetune-epochs E] [--quick]
// Issue 22's reproduction on real images (docs/results.md): LocalMIM-HOG, MAE and no pretraining at an equal wall-clock
// budget on unlabeled Fashion-MNIST, then weighted kNN top-1, the linear probe and fine-tuning on a small labeled subset.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { gunzipSync } from 'node:zlib';
import sharp from 'sharp';
import { embedItems, knnScore, liveBackbone, type Embedded } from '../core/analysis/knn.js';
import { initBackend } from '../core/backend.js';
import { parseRunConfig, presetFor } from '../core/config.js';
import { decodeSafetensors } from '../core/safetensors.js';
import { pretrainModel } from '../core/train/pretrain.js';

const { values } = parseArgs({
  options: {
    budget: { type: 'string', default: '120' },
    seeds: { type: 'string', default: '2' },
    out: { type: 'string', default: '.localmim/fashion-mnist' },
    blr: { type: 'string' },
    'probe-epochs': { type: 'string', default: '5' },
    'finetune-epochs': { type: 'string', default: '3' },
    quick: { type: 'boolean', default: false },
  },
});
const BUDGET_S = Number(values.budget);
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
// Each evaluation ~1 min on 2 CPU cores by default; one warmup epoch, as the schedules are short.
const EVAL = QUICK ? { probe: 1, finetune: 1 } : { probe: Number(values['probe-epochs']), finetune: Number(values['finetune-epochs']) };
const METHODS = [
  { name: 'LocalMIM-HOG', preset: 'localmim-hog' },
  { name: 'MAE', preset: 'mae' },
  { name: 'no pretraining', preset: null },
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

/** Pretrains for BUDGET_S seconds of training (from the start event, so indexing is not counted); returns run id and steps. */
async function pretrain(home: string, preset: string, seed: number) {
  const args = ['pretrain', '--home', home, '--data', join(OUT, 'unlabeled'), '--preset', preset, ...shape];
  args.push('--batch', `${MODEL.batch}`, '--epochs', `${EPOCHS}`, '--warmup', '0.1', '--seed', `${seed}`);
  if (values.blr) args.push('--blr', values.blr);
  const events = await cli(args, (e) => (e.type === 'start' ? BUDGET_S * 1000 : undefined));
  const end = events.find((e) => e.type === 'end')!;
  return { runId: end.runId, steps: end.step, backend: events.find((e) => e.type === 'start')!.backend! };
}

/** Final validation top-1 (on the t10k subset) of a fine-tuning or linear probe. */
async function finetune(home: string, from: number | null, seed: number, probe: boolean): Promise<number> {
  const args = ['finetune', '--home', home, '--data', join(OUT, 'labeled'), '--seed', `${seed}`, '--warmup', '1'];
  args.push(...(from === null ? ['--scratch', ...shape] : ['--from', `${from}`]), '--batch', `${MODEL.batch}`);
  args.push(...(probe ? ['--linear-probe', '--epochs', `${EVAL.probe}`] : ['--epochs', `${EVAL.finetune}`]));
  const evals = (await cli(args)).filter((e) => e.type === 'eval');
  return evals.at(-1)!.top1!;
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

/** The untrained backbone, as a pretraining run with this seed starts (and as the kNN monitor scores it at step 0). */
async function embedInit(seed: number, split: string): Promise<Embedded> {
  await initBackend();
  const config = parseRunConfig({
    model: { size: MODEL.size, ...presetFor('localmim-hog', MODEL.size).model, imgSize: MODEL.img, patchSize: MODEL.patch },
  });
  const model = pretrainModel(config.model, seed);
  const dir = join(OUT, 'labeled', split);
  const items = CLASSES.flatMap((c, label) => readdirSorted(join(dir, c)).map((f) => ({ abs: join(dir, c, f), hash: `${c}/${f}`, label })));
  const { features, dim } = await embedItems(liveBackbone(model.params, config.model), config.model, items);
  return { features, dim, labels: items.map((it) => it.label) };
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

async function main(): Promise<void> {
  if (!existsSync(join(SRC, 't10k-labels-idx1-ubyte.gz'))) {
    console.error(`Fashion-MNIST not found in ${SRC}: apt-get install dataset-fashion-mnist`);
    process.exit(2);
  }
  const started = performance.now();
  await prepare();
  const home = join(OUT, `runs-${new Date().toISOString().replace(/[:.]/g, '-')}`);
  type Row = { steps: number[]; knn: number[]; probe: number[]; finetune: number[] };
  const rows = new Map<string, Row>(METHODS.map((m) => [m.name, { steps: [], knn: [], probe: [], finetune: [] }]));
  let backend = '';
  for (let seed = 0; seed < SEEDS; seed++) {
    for (const m of METHODS) {
      const r = rows.get(m.name)!;
      console.error(`seed ${seed}: ${m.name}`);
      let runId: number | null = null;
      let ref: Embedded, query: Embedded;
      if (m.preset) {
        const p = await pretrain(home, m.preset, seed);
        runId = p.runId;
        r.steps.push(p.steps);
        backend ||= p.backend;
        [ref, query] = [await embedRun(home, runId, 'train'), await embedRun(home, runId, 'val')];
      } else {
        r.steps.push(0);
        [ref, query] = [await embedInit(seed, 'train'), await embedInit(seed, 'val')];
      }
      r.knn.push(knnScore(ref, query, CLASSES.length).top1);
      r.probe.push(await finetune(home, runId, seed, true));
      r.finetune.push(await finetune(home, runId, seed, false));
    }
  }
  const cpu = cpus();
  const table = [
    `Budget ${BUDGET_S} s of pretraining per run; ${SEEDS} seed(s); ${cpu[0]?.model} × ${cpu.length} cores; backend ${backend}` +
      `; pretraining blr ${values.blr ?? 'each preset’s (LocalMIM 2e-4, MAE 1.5e-4)'}; linear probe ${EVAL.probe} epochs, fine-tuning ${EVAL.finetune} epochs; ${((performance.now() - started) / 60000).toFixed(1)} min in all.`,
    '',
    '| method | pretraining steps | kNN top-1 (%) | linear probe top-1 (%) | fine-tune top-1 (%) |',
    '|---|---|---|---|---|',
    ...[...rows].map(([name, r]) => {
      const s = stat(r.steps);
      return `| ${name} | ${s.m.toFixed(0)} ± ${s.sd.toFixed(0)} | ${pct(r.knn)} | ${pct(r.probe)} | ${pct(r.finetune)} |`;
    }),
  ].join('\n');
  console.log(table);
  writeFileSync(join(OUT, 'results.md'), table + '\n');
}

await main();
