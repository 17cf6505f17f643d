import { join } from 'node:path';
import { expect, test } from 'vitest';
import { appInChromium } from './support/app.js';
import { labeledSamples } from './support/images.js';
import { describeWith, PYTHON } from './support/requirements.js';

// Torch-engine runs in the app, in Chromium against `localmim serve` (as test/e2e.test.ts), on Debian's CPU torch:
// pretraining, then fine-tuning the paused run.

describeWith(
  'chromium',
  'torch',
  'pillow',
)('the torch engine in Chromium', () => {
  const app = appInChromium('e2e-torch', { LOCALMIM_PYTHON: PYTHON, OMP_NUM_THREADS: '1' });

  test('start a torch run, see live curves and a preview, pause, resume', async () => {
    const { page, url, consoleErrors, shot } = app;
    await page.goto(url);
    await expect.poll(() => page.getByTestId('torch-engine').textContent()).toMatch(/PyTorch: \S+ on cpu/);
    await page.getByRole('button', { name: 'Use the sample images' }).click();
    await page.getByTestId('dataset-row').filter({ hasText: '300' }).waitFor({ timeout: 60_000 });

    await page.goto(url.replace(/\/\?token=.*/, '/#/new?dataset=1'));
    const field = (label: string) => page.getByLabel(label, { exact: true });
    await page.getByLabel('Model').selectOption('vit-tiny');
    await page.getByTestId('engine').selectOption('torch');
    await expect.poll(() => page.getByTestId('run-backend').textContent()).toBe('torch cpu');
    await page.getByTestId('paper-schedule').check();
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
    await shot('torch-training');

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

  test('fine-tune that run on the torch engine and see its loss and validation curves', async () => {
    const { page, url, home, consoleErrors, shot } = app;
    const labeled = labeledSamples(join(home, 'labeled'), 8); // 6 classes × 8
    await page.goto(url.replace(/\/\?token=.*/, '/#/datasets'));
    await page.getByLabel('Folder of images').fill(labeled);
    await page.getByRole('button', { name: 'Add folder' }).click();
    await page.getByTestId('dataset-row').filter({ hasText: 'labeled' }).waitFor({ timeout: 60_000 });

    await page.goto(url.replace(/\/\?token=.*/, '/#/finetune?from=1'));
    await page.getByLabel('Labeled dataset').selectOption({ label: 'labeled (48 images)' });
    await page.getByTestId('engine').selectOption('torch');
    await page.getByLabel('Epochs', { exact: true }).fill('2');
    await page.getByLabel('Batch', { exact: true }).fill('8');
    await page.getByRole('button', { name: 'Start fine-tuning' }).click();
    await expect.poll(() => page.getByTestId('run-status').textContent(), { timeout: 180_000 }).toBe('finished');
    await expect.poll(() => page.getByText('backend torch cpu').count()).toBe(1);
    expect(Number(await page.getByTestId('charts').getAttribute('data-points'))).toBeGreaterThan(1);
    await page.getByText('Validation top-1').first().waitFor();
    await shot('torch-finetune');
    expect(consoleErrors).toEqual([]);
  }, 300_000);
});
