import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { ensureBuilt } from './cli.js';
import { describeWith, pathOf, PYTHON } from './requirements.js';

// A torch-engine run in the app, in Chromium against `localmim serve` (as test/e2e.test.ts), on Debian's CPU torch.
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const ARTIFACTS = join(ROOT, 'test-artifacts');
let home = '';
let server: ChildProcess;
let browser: Browser;
let page: Page;
let url = '';
const consoleErrors: string[] = [];

describeWith(
  'chromium',
  'torch',
  'pillow',
)('the torch engine in Chromium', () => {
  beforeAll(async () => {
    ensureBuilt();
    home = mkdtempSync(join(tmpdir(), 'localmim-e2e-torch-'));
    mkdirSync(ARTIFACTS, { recursive: true });
    server = spawn(process.execPath, [join(ROOT, 'bin/localmim.js'), 'serve', '--port', '0', '--home', home, '--preview-every', '5'], {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, LOCALMIM_PYTHON: PYTHON, OMP_NUM_THREADS: '1' },
    });
    url = await new Promise<string>((resolve) =>
      createInterface({ input: server.stdout! }).on('line', (l) => l.startsWith('LocalMIM Studio: ') && resolve(l.slice(17))),
    );
    browser = await chromium.launch({ executablePath: pathOf('chromium'), args: ['--headless', '--no-sandbox', '--disable-gpu'] });
    page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on('console', (m) => m.type() === 'error' && consoleErrors.push(m.text()));
    page.on('pageerror', (e) => consoleErrors.push(e.message));
  });

  afterAll(async () => {
    await browser?.close();
    server?.kill('SIGTERM');
    await new Promise((r) => server?.once('exit', r));
    rmSync(home, { recursive: true, force: true });
  });

  test('start a torch run, see live curves and a preview, pause, resume', async () => {
    await page.goto(url);
    await expect.poll(() => page.getByTestId('torch-engine').textContent()).toMatch(/PyTorch: \S+ on cpu/);
    await page.getByRole('button', { name: 'Use the sample images' }).click();
    await page.getByTestId('dataset-row').filter({ hasText: '300' }).waitFor({ timeout: 60_000 });

    await page.goto(url.replace(/\/\?token=.*/, '/#/new?dataset=1'));
    const field = (label: string) => page.getByLabel(label, { exact: true });
    await page.getByLabel('Model').selectOption('vit-tiny');
    await page.getByTestId('engine').selectOption('torch');
    await expect.poll(() => page.getByTestId('run-backend').textContent()).toBe('torch cpu');
    await field('Image size (px)').fill('32');
    await field('Batch').fill('8');
    await field('Epochs').fill('3');
    await field('Warmup epochs').fill('1');
    await page.getByTestId('estimate').waitFor();
    await page.getByRole('button', { name: 'Start pretraining' }).click();

    const points = async () => Number(await page.getByTestId('charts').getAttribute('data-points'));
    await page.getByTestId('charts').waitFor({ timeout: 120_000 });
    await expect.poll(points, { timeout: 120_000 }).toBeGreaterThan(5);
    await page.getByTestId('preview').first().locator('img').nth(3).waitFor({ timeout: 60_000 });
    await expect.poll(() => page.getByText('backend torch cpu').count()).toBe(1);
    await page.screenshot({ path: join(ARTIFACTS, 'torch-training.png'), fullPage: true });

    await page.getByRole('button', { name: 'Pause' }).click();
    await expect.poll(() => page.getByTestId('run-status').textContent(), { timeout: 60_000 }).toBe('paused');
    await page.getByTestId('checkpoints').locator('tbody tr').first().waitFor();
    const pausedAt = await points();

    await page.getByRole('button', { name: 'Resume', exact: true }).click();
    await expect.poll(() => page.getByTestId('run-status').textContent(), { timeout: 60_000 }).toBe('running');
    await expect.poll(points, { timeout: 120_000 }).toBeGreaterThan(pausedAt + 3);
    await page.getByRole('button', { name: 'Pause' }).click();
    await expect.poll(() => page.getByTestId('run-status').textContent(), { timeout: 60_000 }).toBe('paused');

    expect(consoleErrors).toEqual([]);
  }, 300_000);
});
