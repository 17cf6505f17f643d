/** File extensions the indexer decodes; other files are counted as ignored, not rejected. */
export const IMAGE_EXTENSIONS = new Set(['.jpg', '.jpeg', '.jpe', '.png', '.webp', '.gif', '.tif', '.tiff', '.avif']);

/** sharp's format names that we train on (AVIF is reported as 'heif' with AV1 compression). */
export function trainableFormat(format: string | undefined, compression: string | undefined): string | undefined {
  if (format === 'heif') return compression === 'av1' ? 'avif' : undefined;
  return format && ['jpeg', 'png', 'webp', 'gif', 'tiff'].includes(format) ? format : undefined;
}
