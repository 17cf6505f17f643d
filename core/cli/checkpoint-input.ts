import { initBackend } from '../backend.js';
import { evalImage } from '../data/preprocess.js';
import { backboneOf, type Backbone } from '../export/backbone.js';
import { homeDir, homePaths } from '../home.js';
import { checkpointFor } from '../runs/checkpoints.js';
import { Store } from '../store/store.js';
import type { RunRow } from '../store/store.js';
import type { LoadedCheckpoint } from '../train/checkpoint.js';
import type { Rgb8 } from '../targets/image.js';
import { UsageError } from './args.js';

/** What `features` and `analyze` share: a run's checkpoint, its backbone, and one image through the evaluation transform. */
export async function checkpointAndImage(spec: string | undefined, image: string | undefined, o: { home?: string; backend?: string }) {
  if (!spec) throw new UsageError('missing RUN[:STEP], e.g. 3 or 3:1200');
  if (!image) throw new UsageError('--image FILE is required');
  await initBackend(o.backend);
  const store = new Store(homePaths(homeDir(o.home)).db);
  try {
    const { run, checkpoint } = checkpointFor(store, spec);
    const b = backboneOf(run, checkpoint);
    const img = await evalImage(image, b.model.imgSize).catch((err: Error) => {
      throw new UsageError(`--image: cannot read ${image} as an image (${err.message.split('\n')[0]})`);
    });
    return { run, checkpoint, backbone: b, img } as { run: RunRow; checkpoint: LoadedCheckpoint; backbone: Backbone; img: Rgb8 };
  } finally {
    store.close();
  }
}
