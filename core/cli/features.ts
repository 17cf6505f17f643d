import * as tf from '@tensorflow/tfjs';
import { modelDims } from '../config.js';
import { paramsOf } from '../export/backbone.js';
import { backboneFeatures } from '../model/classifier.js';
import { parse } from './args.js';
import { checkpointAndImage } from './checkpoint-input.js';

export const summary = "print the backbone's mean-pooled patch-token features of one image at the model's input size";

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parse(argv, {
    image: { type: 'string' },
    home: { type: 'string' },
    backend: { type: 'string' },
    json: { type: 'boolean', default: false },
  });
  const { backbone: b, img } = await checkpointAndImage(positionals[0], values.image, {
    ...values,
    usage: 'usage: localmim features RUN[:STEP] --image FILE [--json]',
  });
  const f = tf.tidy(
    () => backboneFeatures(paramsOf(b.tensors), modelDims(b.model), b.tensors.get('pos_embed')!.values, [img]).dataSync() as Float32Array,
  );
  const out = { shape: [f.length], values: Array.from(f) };
  console.log(
    values.json
      ? JSON.stringify(out)
      : `features [${out.shape}]: ${out.values
          .slice(0, 8)
          .map((v) => v.toFixed(4))
          .join(' ')} …`,
  );
}
