import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../backend.js';
import { modelDims } from '../config.js';
import { backboneOf, paramsOf } from '../export/backbone.js';
import { homeDir, homePaths } from '../home.js';
import { backboneFeatures } from '../model/classifier.js';
import { checkpointFor } from '../service/recorder.js';
import { Store } from '../store/store.js';
import { readRgb } from '../targets/image.js';
import { parse, UsageError } from './args.js';

export const summary = "print the backbone's mean-pooled patch-token features of one image at the model's input size";

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parse(argv, {
    image: { type: 'string' },
    home: { type: 'string' },
    backend: { type: 'string' },
    json: { type: 'boolean', default: false },
  });
  if (!positionals[0] || !values.image) throw new UsageError('usage: localmim features RUN[:STEP] --image FILE [--json]');
  await initBackend(values.backend);
  const store = new Store(homePaths(homeDir(values.home)).db);
  try {
    const { run: r, checkpoint } = checkpointFor(store, positionals[0]);
    const b = backboneOf(r, checkpoint);
    const img = await readRgb(values.image);
    const S = b.model.imgSize;
    if (img.width !== S || img.height !== S)
      throw new UsageError(`--image: ${values.image} is ${img.width}×${img.height}; this model takes ${S}×${S} (resize it first)`);
    const pos = b.tensors.get('pos_embed')!.values;
    const values_ = tf.tidy(() => backboneFeatures(paramsOf(b.tensors), modelDims(b.model), pos, [img]).dataSync() as Float32Array);
    const out = { shape: [values_.length], values: Array.from(values_) };
    console.log(
      values.json
        ? JSON.stringify(out)
        : `features [${out.shape}]: ${out.values
            .slice(0, 8)
            .map((v) => v.toFixed(4))
            .join(' ')} …`,
    );
  } finally {
    store.close();
  }
}
