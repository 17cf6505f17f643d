import { expect, test } from 'vitest';
import { LocalMIM } from '../core/model/localmim.js';
import { expectForwardMatchesOfficial, golden, tinyConfig } from './support/forward-tiny.js';
import './support/setup.js';

test('every official trainable parameter exists under its name and shape', () => {
  const model = new LocalMIM(tinyConfig, 0);
  const official = golden.param_init.parameters;
  const ours = new Map(model.params.entries().map(([name, t]) => [name, t.shape]));
  expect(new Set(ours.keys())).toEqual(new Set(official.map((p) => p.name)));
  for (const p of official) expect(ours.get(p.name), p.name).toEqual(p.shape);
  expect(new Set(model.params.vars.keys())).toEqual(new Set(official.filter((p) => p.requires_grad).map((p) => p.name)));
  model.dispose();
});

test('forward matches the official code: predictions, targets, masks and losses', () => expectForwardMatchesOfficial());
