import { initBackend } from '../backend.js';
import { evalImage } from '../data/preprocess.js';
import { backboneOf, type Backbone } from '../export/backbone.js';
import { homeDir, homePaths } from '../home.js';
import { checkpointFor } from '../runs/checkpoints.js';
import { Store } from '../store/store.js';
import type { RunRow } from '../store/store.js';
import type { LoadedCheckpoint } from '../train/checkpoint.js';
import type { Rgb8 } from '../image.js';
import { UsageError } from './args.js';

/** What `features` and `analyze` share: a run's checkpoint and its backbone, on a ready backend. */
export async function checkpointOf(spec: string | undefined, o: { home?: string; backend?: string }) {
  if (!spec) throw new UsageError('missing RUN[:STEP], e.g. 3 or 3:1200');
  await initBackend(o.backend);
  const store = new Store(homePaths(homeDir(o.home)).db);
  try {
    const { run, checkpoint } = checkpointFor(store, spec);
    return { run, checkpoint, backbone: backboneOf(run, checkpoint) } as { run: RunRow; checkpoint: LoadedCheckpoint; backbone: Backbone };
  } finally {
    store.close();
  }
}

/** An image file through the evaluation transform; `flag` names where it came from in the error. */
export async function loadImage(file: string, size: number, flag = '--image'): Promise<Rgb8> {
  return evalImage(file, size).catch((err: Error) => {
    throw new UsageError(`${flag}: ${err.message.split('\n')[0]}`);
  });
}

/** A run's checkpoint, its backbone, and one image through the evaluation transform. */
export async function checkpointAndImage(spec: string | undefined, image: string | undefined, o: { home?: string; backend?: string }) {
  if (!spec) throw new UsageError('missing RUN[:STEP], e.g. 3 or 3:1200');
  if (!image) throw new UsageError('--image FILE is required');
  const c = await checkpointOf(spec, o);
  return { ...c, img: await loadImage(image, c.backbone.model.imgSize) };
}
