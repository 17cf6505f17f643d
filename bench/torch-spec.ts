// The torch engine's job spec (core/engine.ts torchSpec) of the app's default run at one size, for
// bench/torch-engine.py, which has no sizes of its own: `npx tsx bench/torch-spec.ts MODEL IMG PATCH BATCH`.
import { newRunConfig } from '../core/config.js';
import { torchSpec } from '../core/engine.js';

const [size = 'vit-base', img = '224', patch = '16', batch = '64'] = process.argv.slice(2);
const config = newRunConfig(undefined, size, {
  model: { imgSize: Number(img), patchSize: Number(patch) },
  optim: { batch: Number(batch) },
});
console.log(JSON.stringify(torchSpec(config)));
