// The torch engine's job specs (core/engine.ts) of the app's default run at one size, for bench/torch-engine.py,
// which has no sizes of its own: `npx tsx bench/torch-spec.ts MODEL IMG PATCH BATCH [finetune]` (pretraining, or
// fine-tuning that model on 1000 classes with its recipe's layer decay).
import { newRunConfig } from '../core/presets.js';
import { FinetuneRunSchema } from '../core/finetune-config.js';
import { torchFinetuneSpec, torchSpec } from '../core/engine.js';
import { classifierFor } from '../core/model/classifier.js';
import { paramGroups } from '../core/runs/torch.js';

const [size = 'vit-base', img = '224', patch = '16', batch = '64', kind = 'pretrain'] = process.argv.slice(2);
const config = newRunConfig(undefined, size, {
  model: { imgSize: Number(img), patchSize: Number(patch) },
  optim: { batch: Number(batch) },
});
if (kind === 'finetune') {
  const classes = Array.from({ length: 1000 }, (_, k) => `class-${k}`);
  const run = FinetuneRunSchema.parse({ model: config.model, finetune: { batch: Number(batch) }, seed: 0, classes, from: null });
  const model = classifierFor(run.model, { classes: classes.length, scratch: true }, run.seed);
  console.log(JSON.stringify(torchFinetuneSpec(run, paramGroups(model, run.finetune.layerDecay))));
  model.dispose();
} else console.log(JSON.stringify(torchSpec(config)));
