import * as tf from '@tensorflow/tfjs';
import { paramsOf } from '../export/backbone.js';
import { featuresOf } from '../model/classifier.js';
import { homeFlag, parse } from './args.js';
import { checkpointAndImage } from './checkpoint-input.js';

export const summary =
  "print the backbone's mean-pooled features of one image at the model's input size (ViT: patch tokens; Swin: normed last-stage tokens)";

const OPTIONS = {
  image: { type: 'string', arg: 'FILE', help: "the image, at the model's input size (required)" },
  home: homeFlag,
  backend: { type: 'string', arg: 'NAME', help: 'tfjs backend to use (default: the fastest that works; see localmim doctor)' },
  json: { type: 'boolean', default: false, help: 'print all the features as JSON' },
} as const;

export async function run(argv: string[]): Promise<void> {
  const { values, positionals } = parse(argv, OPTIONS, { usage: 'localmim features RUN[:STEP] --image FILE [options]', summary });
  const { backbone: b, img } = await checkpointAndImage(positionals[0], values.image, values);
  const t = tf.tidy(() => featuresOf(paramsOf(b.tensors), b.model, [img]));
  const f = await t.data();
  t.dispose();
  const bad = f.findIndex((v) => !Number.isFinite(v));
  if (bad >= 0)
    throw new Error(
      `run ${positionals[0]}: its features of ${values.image} are not finite (${f[bad]} at index ${bad}): its weights overflow`,
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
