import { expect, test } from 'vitest';
import { parseRunConfig } from '../core/config.js';
import { LocalMIM } from '../core/model/localmim.js';
import { estimate } from '../core/runs/estimate.js';
import './support/setup.js';

test.each([{}, { target: 'pixel' }, { variant: 'global' }, { size: 'vit-small', imgSize: 96, patchSize: 16 }])(
  'the estimated parameter count is the model’s: %j',
  (model) => {
    const cfg = parseRunConfig({ model: { imgSize: 64, patchSize: 8, ...model } });
    const m = new LocalMIM(cfg.model, 0);
    const trainable = [...m.params.vars.values()].reduce((n, v) => n + v.size, 0);
    m.dispose();
    expect(estimate(cfg, 300, 'wasm').params).toBe(trainable);
  },
);
