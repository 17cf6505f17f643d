import { mkdirSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { SAMPLE_IMAGES } from '../core/home.js';
import { expect, test } from 'vitest';
import { appInChromium } from './support/app.js';
import { describeWith } from './support/requirements.js';

// The whole app in Chromium against `localmim serve`, with a real data folder and real training.

describeWith('chromium')('the app in Chromium', () => {
  const app = appInChromium('e2e');

  test('add the sample images, train, watch the chart, pause, resume, see checkpoints and reconstructions', async () => {
    const { page, url, consoleErrors, shot } = app;
    await page.goto(url);
    await expect.poll(() => page.getByTestId('backend').textContent()).toMatch(/Compute: (wasm|cpu|tensorflow)/);
    // Its tooltip names what runs the products under wasm: our sgemm (the tests' LOCALMIM_GEMM) or a system BLAS.
    if ((await page.getByTestId('backend').textContent())!.includes('wasm'))
      expect(await page.getByTestId('backend').getAttribute('title')).toMatch(/^native: our sgemm .*; GEMM ours \(LOCALMIM_GEMM=own\)$/m);
    await page.getByRole('button', { name: 'Use the sample images' }).click();
    await page.getByTestId('dataset-row').filter({ hasText: '300' }).waitFor({ timeout: 60_000 });
    await page.getByTestId('thumbnails').locator('img').first().waitFor();
    await shot('1-datasets');

    await page.goto(url.replace(/\/\?token=.*/, '/#/new?dataset=1'));
    const field = (label: string) => page.getByLabel(label, { exact: true });
    // By default the schedule is fitted to 30 minutes here (300 images: the preset's length fits), its fields the service's.
    await expect.poll(() => page.getByTestId('fitted').textContent()).toBe("Fitted to 30 min here: the preset's 100 epochs fit 30 min.");
    expect(await field('Epochs').isDisabled()).toBe(true);
    await field('Time budget (min)').fill('0.5');
    await expect
      .poll(() => page.getByTestId('fitted').textContent())
      .toMatch(/^Fitted to 0\.5 min here: \d+ epoch\(s\) of .* fit 0\.5 min/);
    // The preset's own schedule is one click away, and the fields are the form's again.
    await page.getByTestId('paper-schedule').check();
    await expect.poll(() => field('Epochs').isDisabled()).toBe(false);
    // A Swin size brings its own image side and patch 4, and decodes every stage; back on a ViT, the app's defaults.
    await page.getByLabel('Model').selectOption('swin-tiny');
    await expect.poll(() => field('Image size (px)').inputValue()).toBe('112');
    expect(await field('Patch size (px)').inputValue()).toBe('4');
    await page.getByTestId('swin-stages').waitFor();
    // A baseline brings its authors' schedule (GreenMIM's rate on a Swin), LocalMIM's preset the size's again.
    await page.getByLabel('Preset').selectOption('mae');
    await expect.poll(() => field('Base learning rate').inputValue()).toBe('0.00015');
    await page.getByLabel('Preset').selectOption('localmim-hog');
    await expect.poll(() => field('Base learning rate').inputValue()).toBe('0.0001');
    await page.getByLabel('Model').selectOption('vit-tiny');
    await expect.poll(() => field('Image size (px)').inputValue()).toBe('64');
    await field('Image size (px)').fill('30');
    await expect.poll(() => page.getByTestId('field-error').first().textContent()).toMatch(/imgSize=30 must be a multiple of patchSize=8/);
    expect(await page.getByRole('button', { name: 'Start pretraining' }).isDisabled()).toBe(true);
    await field('Image size (px)').fill('32');
    await field('Batch').fill('8');
    await field('Epochs').fill('3');
    await field('Warmup epochs').fill('1');
    await page.getByTestId('estimate').waitFor();
    await shot('2-new-run');
    await page.getByRole('button', { name: 'Start pretraining' }).click();

    const points = async () => Number(await page.getByTestId('charts').getAttribute('data-points'));
    await page.getByTestId('charts').waitFor({ timeout: 120_000 });
    await expect.poll(points, { timeout: 120_000 }).toBeGreaterThan(5);
    await page.getByTestId('preview').first().locator('img').nth(3).waitFor({ timeout: 60_000 });
    await shot('3-training');

    await page.getByRole('button', { name: 'Pause' }).click();
    await expect.poll(() => page.getByTestId('run-status').textContent(), { timeout: 60_000 }).toBe('paused');
    await page.getByTestId('checkpoints').locator('tbody tr').first().waitFor();
    const pausedAt = await points();

    await page.reload(); // status and charts survive a reload
    await expect.poll(() => page.getByTestId('run-status').textContent()).toBe('paused');
    expect(await points()).toBe(pausedAt);

    await page.getByRole('button', { name: 'Resume', exact: true }).click();
    await expect.poll(() => page.getByTestId('run-status').textContent(), { timeout: 60_000 }).toBe('running');
    await expect.poll(points, { timeout: 120_000 }).toBeGreaterThan(pausedAt + 3);
    await shot('4-resumed');
    await page.getByRole('button', { name: 'Pause' }).click();
    await expect.poll(() => page.getByTestId('run-status').textContent(), { timeout: 60_000 }).toBe('paused');

    expect(consoleErrors).toEqual([]);
  });

  test('resume from the oldest checkpoint at a lower learning rate: what came after is set aside, the change recorded', async () => {
    const { page, consoleErrors } = app;
    const oldest = Number(await page.getByTestId('checkpoints').locator('tbody tr td').first().textContent());
    await page.getByTestId('resume-from').selectOption(String(oldest));
    await page.getByTestId('resume-blr').fill('0.0001');
    await page.getByRole('button', { name: 'Resume', exact: true }).click();
    await expect
      .poll(() => page.getByTestId('resumes').locator('li').last().textContent(), { timeout: 60_000 })
      .toMatch(new RegExp(`at step ${oldest}; blr [\\d.e-]+ → 0\\.0001; steps after it set aside in .*superseded-\\d+`));
    await page.getByRole('button', { name: 'Pause' }).click();
    await expect.poll(() => page.getByTestId('run-status').textContent(), { timeout: 60_000 }).toBe('paused');

    expect(consoleErrors).toEqual([]);
  });

  test('export the backbone, look at its attention, fine-tune it on a labeled folder', async () => {
    const { page, url, home, consoleErrors, shot } = app;
    await page.getByRole('button', { name: 'Export' }).click();
    await expect
      .poll(() => page.getByTestId('exported').textContent(), { timeout: 60_000 })
      .toMatch(/model\.safetensors, config\.json, README\.md/);
    await page.getByRole('button', { name: 'Scale out…' }).click();
    await expect
      .poll(() => page.getByTestId('scale-out').textContent(), { timeout: 60_000 })
      .toMatch(/jobs\/run-1 \(300 images\)[\s\S]*torchrun --standalone --nproc_per_node 8 train\.py/);
    await shot('5-scale-out');

    await page.getByRole('link', { name: 'See its attention…' }).click();
    await page.getByTestId('attention').locator('canvas').first().waitFor({ timeout: 60_000 });
    expect(await page.getByTestId('attention').locator('canvas').count()).toBe(12); // one map per block of vit-tiny
    await shot('5-attention');
    // Over a set: NMI, KL and, for a pretraining run, gradient norms per block, each mean ± std.
    await page.getByLabel('Images in the set').selectOption('16');
    await page.getByRole('checkbox', { name: /statistics over/ }).check();
    await page.getByTestId('attention-set').locator('.chart').nth(2).waitFor({ timeout: 120_000 });
    await expect.poll(() => page.getByText(/^Over 16 images/).count()).toBe(1);
    await shot('5b-attention-set');

    // A labeled folder: two classes of sample crops.
    const labeled = join(home, 'labeled');
    for (const cls of ['coffee', 'rocket']) {
      mkdirSync(join(labeled, cls), { recursive: true });
      for (let i = 0; i < 30; i++)
        symlinkSync(join(SAMPLE_IMAGES, `${cls}-${String(i).padStart(2, '0')}.jpg`), join(labeled, cls, `${i}.jpg`));
    }
    await page.goto(url.replace(/\/\?token=.*/, '/#/datasets'));
    await page.getByLabel('Folder of images').fill(labeled);
    await page.getByRole('button', { name: 'Add folder' }).click();
    await page.getByTestId('dataset-row').filter({ hasText: 'labeled' }).waitFor({ timeout: 60_000 });

    await page.goto(url.replace(/\/\?token=.*/, '/#/finetune?from=1'));
    await page.getByLabel('Labeled dataset').selectOption({ label: 'labeled (60 images)' });
    await page.getByLabel('Epochs', { exact: true }).fill('2');
    await page.getByLabel('Batch', { exact: true }).fill('16');
    await page.getByRole('button', { name: 'Start fine-tuning' }).click();
    await expect.poll(() => page.getByTestId('run-status').textContent(), { timeout: 120_000 }).toBe('finished');
    await page.getByText('Validation top-1').first().waitFor();
    await shot('6-finetune');
    expect(consoleErrors).toEqual([]);
  });
});
