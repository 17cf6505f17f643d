import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { expect, test } from 'vitest';
import { PREVIEW_PROBES, previewImages } from '../core/analysis/preview.js';
import { SAMPLE_IMAGES } from '../core/home.js';

test('previews show the first images that can be read, on either engine: an unreadable one is passed over', async () => {
  const [a, b, c] = readdirSync(SAMPLE_IMAGES)
    .filter((f) => f.endsWith('.jpg'))
    .map((f) => ({ abs: join(SAMPLE_IMAGES, f) }));
  const images = await previewImages([{ abs: join(SAMPLE_IMAGES, 'gone.jpg') }, a!, b!, c!], 32);
  expect(images).toHaveLength(PREVIEW_PROBES);
  const [first] = await previewImages([a!], 32);
  expect(images[0]!.data).toEqual(first!.data);
  expect(images[0]).toMatchObject({ width: 32, height: 32 });
});
