import { describe, test } from 'vitest';
import './setup.js';
import { expectHogMatches, expectPixelsMatch, golden } from './targets-golden.js';

describe.each(golden.images)('$name', (image) => {
  test.each(image.hog)('HOG nbins=$nbins bias=$bias', (c) => expectHogMatches(image, c));
  test.each(image.pixel)('normalized pixels p=$patch', (px) => expectPixelsMatch(image, px));
});
