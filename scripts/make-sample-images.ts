// Regenerates assets/sample-images/ from scikit-image's data photographs as Debian ships them:
//   apt-get download python3-skimage && dpkg -x python3-skimage_*.deb /tmp/skimage
//   npx tsx scripts/make-sample-images.ts /tmp/skimage/usr/lib/python3/dist-packages/skimage/data
// 50 random square crops of each photograph, resized to 96×96, JPEG quality 88; seeded, so reproducible.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';
import { Rng } from '../core/random.js';

const PHOTOS = [
  ['astronaut.png', 'Eileen Collins, NASA Great Images database', 'public domain (no known copyright restrictions)'],
  ['chelsea.png', 'Chelsea the cat, photographed by Stefan van der Walt', 'CC0'],
  ['coffee.png', 'Coffee cup (Pikolo Espresso Bar), photographed by Rachel Michetti', 'CC0'],
  ['rocket.jpg', 'Launch of DSCOVR on Falcon 9, SpaceX Photos', 'public domain (released by SpaceX)'],
  ['hubble_deep_field.jpg', 'Hubble eXtreme Deep Field, NASA/HubbleSite', 'public domain (NASA)'],
  ['ihc.png', 'Immunohistochemistry sample, Center for Microscopy And Molecular Imaging', 'no known copyright restrictions'],
] as const;

const src = process.argv[2];
if (!src) throw new Error('usage: tsx scripts/make-sample-images.ts SKIMAGE_DATA_DIR');
const out = new URL('../assets/sample-images/', import.meta.url).pathname;
mkdirSync(out, { recursive: true });
const rng = new Rng(2023);
const sources = [
  '# Sources of the sample images',
  '',
  'Crops (96×96, JPEG) of photographs shipped with scikit-image 0.19.3 (Debian package python3-skimage),',
  'made by `scripts/make-sample-images.ts`.',
  '',
  '| files | original | licence |',
  '| --- | --- | --- |',
];
for (const [file, what, licence] of PHOTOS) {
  const img = sharp(join(src, file));
  const { width, height } = await img.metadata();
  const stem = file.replace(/\.\w+$/, '');
  for (let i = 0; i < 50; i++) {
    const side = Math.round(Math.min(width!, height!) * rng.uniform(0.2, 0.6));
    const left = Math.floor(rng.next() * (width! - side));
    const top = Math.floor(rng.next() * (height! - side));
    const jpeg = await sharp(join(src, file))
      .extract({ left, top, width: side, height: side })
      .resize(96, 96, { kernel: 'cubic' })
      .jpeg({ quality: 88 })
      .toBuffer();
    writeFileSync(join(out, `${stem}-${String(i).padStart(2, '0')}.jpg`), jpeg);
  }
  sources.push(`| \`${stem}-00.jpg\` … \`${stem}-49.jpg\` | ${file}: ${what} | ${licence} |`);
}
writeFileSync(join(out, 'SOURCES.md'), sources.join('\n') + '\n');
