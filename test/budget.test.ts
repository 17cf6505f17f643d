import { mkdtempSync, readdirSync, rmSync, symlinkSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, test } from 'vitest';
import { newRunConfig, type RunConfig } from '../core/config.js';
import { SAMPLE_IMAGES } from '../core/home.js';
import { DEFAULT_MINUTES, fitToBudget } from '../core/runs/budget.js';
import { estimate } from '../core/runs/estimate.js';
import { Store } from '../core/store/store.js';
import { localmimAsync as localmim } from './support/cli.js';

/** The schedule `fitToBudget` gives `n` images of side `side`, its input kept. */
const fitSchedule = (config: RunConfig, n: number, backend: string, minutes: number, side = 64) => {
  const fitted = fitToBudget(config, new Array<number>(n).fill(side), backend, { minutes, input: false });
  const { epochs, warmupEpochs, blr } = fitted.config.optim;
  return { optim: { epochs, warmupEpochs, blr }, why: fitted.why };
};

const dir = mkdtempSync(join(tmpdir(), 'localmim-budget-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

test("a budget shorter than the preset's schedule fits whole epochs and a 5 % warmup; the blr stays the preset's", () => {
  const config = newRunConfig();
  const { secondsPerEpoch } = estimate(config, 10_000, 'wasm-native');
  const fitted = fitSchedule(config, 10_000, 'wasm-native', 20);
  expect(fitted.optim.epochs).toBeGreaterThan(1);
  expect(fitted.optim.epochs * secondsPerEpoch).toBeLessThanOrEqual(20 * 60);
  expect((fitted.optim.epochs + 1) * secondsPerEpoch).toBeGreaterThan(20 * 60);
  expect(fitted.optim.warmupEpochs).toBeCloseTo(0.05 * fitted.optim.epochs, 1);
  expect(fitted.optim.blr).toBe(config.optim.blr);
  expect(fitted.why).toBe(
    `${fitted.optim.epochs} epoch(s) of ${(secondsPerEpoch / 60).toFixed(1)} min (312 steps) fit 20 min on wasm-native, warmup ${fitted.optim.warmupEpochs}`,
  );
});

test("where the preset's schedule fits, its length and warmup stay", () => {
  const config = newRunConfig();
  const fitted = fitSchedule(config, 300, 'webgpu', DEFAULT_MINUTES);
  expect(fitted.optim).toMatchObject({ epochs: config.optim.epochs, warmupEpochs: config.optim.warmupEpochs });
  expect(fitted.why).toBe("the preset's 100 epochs fit 30 min");
});

test('one epoch longer than the budget still trains one, and says so', () => {
  const fitted = fitSchedule(newRunConfig(), 10_000_000, 'cpu', 1);
  expect(fitted.optim.epochs).toBe(1);
  expect(fitted.why).toMatch(/^one epoch \(.* on cpu\) is longer than 1 min: 1 epoch/);
});

test("a ViT's input follows images smaller than it, keeping its token grid; larger ones and Swin keep theirs", () => {
  const fit = (config: RunConfig, side: number) => fitToBudget(config, [side - 1, side, side + 1], 'webgpu', { minutes: 30, input: true });
  const small = fit(newRunConfig(), 28);
  expect(small.config.model).toMatchObject({ imgSize: 32, patchSize: 4 });
  expect(small.why).toMatch(/^input 32 px, patch 4 \(the images' median side is 28 px\); /);
  expect(fit(newRunConfig(), 300).config.model).toMatchObject({ imgSize: 64, patchSize: 8 });
  expect(fit(newRunConfig('localmim-hog', 'swin-tiny'), 28).config.model.imgSize).toBe(
    newRunConfig('localmim-hog', 'swin-tiny').model.imgSize,
  );
});

test('the CLI fits a new run to --minutes by default, and refuses a budget beside a schedule flag', async () => {
  const data = join(dir, 'images');
  mkdirSync(data);
  for (const f of readdirSync(SAMPLE_IMAGES).slice(0, 8)) symlinkSync(join(SAMPLE_IMAGES, f), join(data, f));
  const home = join(dir, 'home');
  const args = ['pretrain', '--home', home, '--data', data, '--model', 'vit-tiny', '--img', '32', '--patch', '8', '--batch', '4'];
  const r = await localmim([...args, '--max-steps', '1']);
  expect(r.code, r.stderr).toBe(0);
  expect(r.stderr).toMatch(/schedule {2}the preset's 100 epochs fit 30 min\n/);
  const short = await localmim([...args, '--minutes', '0.01', '--max-steps', '1']);
  const [, epochs, warmup] =
    /schedule {2}(\d+) epoch\(s\) of .* fit 0\.01 min on wasm(?:-native)?, warmup ([\d.]+)\n/.exec(short.stderr) ?? [];
  expect(epochs, short.stderr).toBeDefined();
  const store = new Store(join(home, 'localmim.db'));
  expect((store.run(1)!.config as RunConfig).optim).toMatchObject({ epochs: 100, warmupEpochs: 10, blr: 2e-4 });
  expect((store.run(2)!.config as RunConfig).optim).toMatchObject({ epochs: Number(epochs), warmupEpochs: Number(warmup), blr: 2e-4 });
  store.close();

  const both = await localmim([...args, '--minutes', '5', '--epochs', '2']);
  expect(both.code).toBe(2);
  expect(both.stderr.trim()).toBe('localmim pretrain: --minutes fits the schedule to a time; --epochs sets it: give one of them');
  expect((await localmim([...args, '--minutes', '0x10'])).stderr).toMatch(/--minutes: expected a positive number of minutes, got "0x10"/);
  expect(readdirSync(join(home, 'runs')).sort()).toEqual(['1', '2']);
}, 120_000);
