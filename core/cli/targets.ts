import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../backend.js';
import { decodeAsStored } from '../data/decode.js';
import { hog } from '../targets/hog.js';
import { normalize, toTensor } from '../image.js';
import { pixelTargets } from '../targets/pixels.js';
import { numberList, parse, positiveInt, UsageError } from './args.js';

export const summary = 'print the HOG or pixel targets of one image (no resize)';

const OPTIONS = {
  image: { type: 'string', arg: 'FILE', help: 'the image (required)' },
  kind: { type: 'string', default: 'hog', arg: 'KIND', help: 'hog or pixel' },
  bins: { type: 'string', default: '9', arg: 'N', help: 'HOG orientation bins' },
  cells: { type: 'string', default: '4,8,16,32', arg: 'LIST', help: 'cell sizes in pixels, one per scale' },
  bias: { type: 'string', arg: 'B0,B1', help: 'fixed offsets added to the two Sobel responses (HOG)' },
  'norm-pix': { type: 'boolean', default: false, help: 'standardise each pixel-target token (pixel)' },
  json: { type: 'boolean', default: false, help: 'print every target value as JSON' },
} as const;

export async function run(argv: string[]): Promise<void> {
  const { values } = parse(argv, OPTIONS, { usage: 'localmim targets --image FILE [options]', summary });
  if (!values.image) throw new UsageError('--image FILE is required');
  if (values.kind !== 'hog' && values.kind !== 'pixel') throw new UsageError(`--kind: expected hog or pixel, got "${values.kind}"`);
  const nbins = positiveInt('bins', values.bins);
  const cells = numberList('cells', values.cells);
  if (cells.some((c) => !Number.isInteger(c) || c < 1)) throw new UsageError(`--cells: expected positive integers, got "${values.cells}"`);
  const bias = values.bias ? numberList('bias', values.bias) : undefined;
  if (bias && bias.length !== 2) throw new UsageError(`--bias: expected two numbers b0,b1, got "${values.bias}"`);

  const img = await decodeAsStored(values.image);
  await initBackend();
  const tooBig = cells.find((c) => c > img.height || c > img.width);
  if (tooBig) throw new UsageError(`--cells: cell ${tooBig} is larger than the ${img.width}×${img.height} image ${values.image}`);
  const computed = tf.tidy(() => {
    const x = toTensor([img]);
    if (values.kind === 'pixel') return cells.map((p) => pixelTargets(normalize(x), p, values['norm-pix']));
    return hog(x, nbins, cells, bias && cells.map(() => tf.tensor1d(bias)));
  });
  const perCell = (await Promise.all(computed.map((t) => t.data()))) as Float32Array[];
  tf.dispose(computed);
  const scales = cells.map((cell, k) => {
    const grid = [Math.floor(img.height / cell), Math.floor(img.width / cell)];
    const L = grid[0]! * grid[1]!;
    return { cell, grid, shape: [L, perCell[k]!.length / L], values: Array.from(perCell[k]!) };
  });
  const head =
    values.kind === 'hog' ? { kind: 'hog', bins: nbins, ...(bias ? { bias } : {}) } : { kind: 'pixel', normPix: values['norm-pix'] };
  if (values.json) {
    console.log(JSON.stringify({ ...head, scales }));
    return;
  }
  console.log(`${values.image}: ${img.width}×${img.height}, ${values.kind} targets`);
  for (const s of scales)
    console.log(`  cell ${String(s.cell).padStart(3)}  grid ${s.grid.join('×').padEnd(7)}  shape [${s.shape.join(', ')}]`);
}
