#!/usr/bin/env node
// The CLI runs the TypeScript sources directly, so a checkout needs no build step.
import { register } from 'tsx/esm/api';

register();
await import('../core/cli/main.ts');
