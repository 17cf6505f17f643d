import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, test } from 'vitest';
import type { ApiEvent } from '../core/api.js';
import { parseRunConfig } from '../core/config.js';
import { launchNodeJob } from '../core/jobs/launch.js';
import { LocalMIM } from '../core/model/localmim.js';
import { Service } from '../core/service/service.js';
import { AdamW } from '../core/train/adamw.js';
import { saveCheckpoint } from '../core/train/checkpoint.js';
import './support/setup.js';

const dir = mkdtempSync(join(tmpdir(), 'localmim-responsive-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Analysed: large enough that a few hundred images take seconds. Trained: a step takes a fraction of a second. */
const analysed = parseRunConfig({ model: { D: 64, depth: 8, heads: 2, decoderDim: 32, decoderHeads: 2, imgSize: 80, patchSize: 8 } });
const trained = {
  model: { D: 32, depth: 4, heads: 2, decoderDim: 16, decoderHeads: 2, imgSize: 32, patchSize: 8 },
  optim: { epochs: 20, batch: 8 },
};
const POLL_MS = 50;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A pretraining run with one checkpoint of freshly initialised weights, written straight to the store. */
async function sourceRun(s: Service): Promise<number> {
  const run = s.store.createRun({ name: 'analysed', datasetId: null, config: analysed, backend: 'wasm', status: 'finished', pid: null });
  const model = new LocalMIM(analysed.model, analysed.seed);
  const optimizer = new AdamW(model.params.vars, analysed.optim);
  const path = join(dir, 'analysed.safetensors');
  const written = await saveCheckpoint(path, model, optimizer, { step: 1, epoch: 0, loss: null, config: analysed });
  optimizer.dispose();
  model.dispose();
  s.store.addCheckpoint({ runId: run.id, step: 1, epoch: 0, loss: null, path, ...written });
  return run.id;
}

test('while a long analysis runs, the API answers at once and training steps keep arriving', async () => {
  const s = new Service(join(dir, 'home'), () => launchNodeJob());
  const events: { at: number; e: ApiEvent }[] = [];
  s.subscribe((e) => events.push({ at: performance.now(), e }));
  try {
    await s.call('datasets.addSample', {});
    while (!events.some(({ e }) => e.type === 'dataset.indexed')) await sleep(50);
    const datasetId = s.store.datasetSummaries()[0]!.id;
    const analysedId = await sourceRun(s);
    const { runId } = (await s.call('runs.create', { datasetId, config: trained })) as { runId: number };
    const steps = () => events.filter(({ e }) => e.type === 'run.metrics' && e.runId === runId).map(({ at }) => at);
    while (steps().length < 2) await sleep(50);

    const t0 = performance.now();
    let t1 = 0;
    const analysis = s.call('analysis.set', { runId: analysedId, datasetId, images: 300 }).finally(() => (t1 = performance.now()));
    // Polls on a fixed schedule: a poll's latency counts from when it was due, so a blocked event loop shows.
    const latencies: number[] = [];
    for (let due = t0 + POLL_MS; !t1; due += POLL_MS) {
      await sleep(due - performance.now());
      await s.call('runs.list', {});
      await s.call('app.info', {});
      latencies.push(performance.now() - due);
    }
    const set = (await analysis) as { images: { used: number } };
    const during = [t0, ...steps().filter((at) => at > t0 && at < t1), t1];
    const gaps = during.slice(1).map((at, i) => at - during[i]!);
    const progress = events.filter(({ e }) => e.type === 'job.progress').length;
    console.log(
      `analysis.set of ${set.images.used} images: ${((t1 - t0) / 1000).toFixed(1)} s; ${latencies.length} polls, ` +
        `slowest ${Math.max(...latencies).toFixed(0)} ms; ${during.length - 2} training steps, longest gap ${Math.max(...gaps).toFixed(0)} ms; ` +
        `${progress} progress events`,
    );
    expect(t1 - t0).toBeGreaterThan(8_000); // long enough to tell
    expect(Math.max(...latencies)).toBeLessThan(100);
    expect(Math.max(...gaps)).toBeLessThan(2_000);
  } finally {
    await s.shutdown(); // pauses the training run: it checkpoints and ends
  }
});
