import { describe, test } from 'vitest';
import './support/setup.js';
import { expectHogMatches, expectPixelsMatch, golden } from './support/targets-golden.js';

describe.each(golden.images)('$name', (image) => {
  test.each(image.hog)('HOG nbins=$nbins bias=$bias', (c) => expectHogMatches(image, c));
  test.each(image.pixel)('normalized pixels p=$patch', (px) => expectPixelsMatch(image, px));
});
