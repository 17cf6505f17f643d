import { initBackend } from '../backend.js';
import { backboneOf, type Backbone } from '../export/backbone.js';
import { homeDir, homePaths } from '../home.js';
import { checkpointFor } from '../service/recorder.js';
import { Store } from '../store/store.js';
import type { RunRow } from '../store/store.js';
import type { LoadedCheckpoint } from '../train/checkpoint.js';
import { readRgb, type Rgb8 } from '../targets/image.js';
import { UsageError } from './args.js';

/** What `features` and `analyze` share: a run's checkpoint, its backbone, and one image at the model's size. */
export async function checkpointAndImage(
  spec: string | undefined,
  image: string | undefined,
  o: { home?: string; backend?: string; usage: string },
) {
  if (!spec || !image) throw new UsageError(o.usage);
  await initBackend(o.backend);
  const store = new Store(homePaths(homeDir(o.home)).db);
  try {
    const { run, checkpoint } = checkpointFor(store, spec);
    const b = backboneOf(run, checkpoint);
    const img = await readRgb(image);
    const S = b.model.imgSize;
    if (img.width !== S || img.height !== S)
      throw new UsageError(`--image: ${image} is ${img.width}×${img.height}; this model takes ${S}×${S} (resize it first)`);
    return { run, checkpoint, backbone: b, img } as { run: RunRow; checkpoint: LoadedCheckpoint; backbone: Backbone; img: Rgb8 };
  } finally {
    store.close();
  }
}
