import { describeSlowPath, initBackend } from '../backend.js';
import { describeTorch, detectTorch } from '../engine.js';
import { parse } from './args.js';

export const summary = 'show which tfjs backend runs here, and why the faster ones do not; and the torch engine';

export async function run(argv: string[]): Promise<void> {
  const { values } = parse(
    argv,
    {
      backend: { type: 'string', arg: 'NAME', help: 'try this backend only (native, wasm, cpu, tensorflow, …)' },
      json: { type: 'boolean', default: false, help: 'print the report as JSON' },
    },
    { usage: 'localmim doctor [options]', summary },
  );
  const r = await initBackend(values.backend);
  const torch = detectTorch();
  if (values.json) {
    console.log(JSON.stringify({ ...r, torch }));
    return;
  }
  console.log(`backend   ${r.chosen}${r.forcedBy ? ` (forced by ${r.forcedBy})` : ''}`);
  console.log(`tfjs      ${r.tfjsVersion}`);
  console.log(`threads   ${r.threads}`);
  console.log(`gpu       ${r.gpu}`);
  console.log(`native    ${r.native}`);
  if (r.slow) console.log(`slow      ${describeSlowPath(r.slow)}`);
  for (const a of r.attempts) if (a.name !== r.chosen) console.log(`  ${a.name.padEnd(15)} ${a.reason}`);
  console.log(`torch     ${describeTorch(torch)}`);
  for (const x of torch.rejected) console.log(`  ${x.python.padEnd(15)} ${x.reason}`);
}
