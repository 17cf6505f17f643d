import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { homeDir } from '../home.js';
import { launchNodeJob } from '../jobs/launch.js';
import { startServer } from '../server/server.js';
import { Service } from '../service/service.js';
import { homeFlag, parse, positiveInt, UsageError } from './args.js';

export const summary = 'serve the app to a browser: localmim serve [--port 5170] [--host 127.0.0.1]';

export const RENDERER_DIR = fileURLToPath(new URL('../../renderer/dist', import.meta.url));

const OPTIONS = {
  port: { type: 'string', default: '5170', arg: 'PORT', help: 'port to listen on (0: any free port)' },
  host: { type: 'string', default: '127.0.0.1', arg: 'HOST', help: 'address to listen on; others than localhost reach the app too' },
  home: homeFlag,
  'preview-every': { type: 'string', default: '25', arg: 'STEPS', help: 'steps between the reconstruction previews of running runs' },
  jobs: { type: 'string', default: '1', arg: 'N', help: 'training runs at once; more wait as queued' },
} as const;

export async function run(argv: string[]): Promise<void> {
  const { values } = parse(argv, OPTIONS, { usage: 'localmim serve [options]', summary });
  await serve({
    port: values.port === '0' ? 0 : positiveInt('port', values.port),
    host: values.host,
    home: homeDir(values.home),
    previewEvery: positiveInt('preview-every', values['preview-every']),
    concurrency: positiveInt('jobs', values.jobs),
  });
}

export async function serve(o: { port: number; host: string; home: string; previewEvery?: number; concurrency?: number }): Promise<void> {
  if (!existsSync(`${RENDERER_DIR}/index.html`)) throw new UsageError(`the UI is not built (${RENDERER_DIR}): run npm run build`);
  if (!['127.0.0.1', 'localhost', '::1'].includes(o.host))
    console.error(`warning: serving on ${o.host}, reachable from other machines; the token is the only protection`);
  const service = new Service(o.home, launchNodeJob, { previewEvery: o.previewEvery, concurrency: o.concurrency });
  const { server, url, urls } = await startServer({ service, rendererDir: RENDERER_DIR, host: o.host, port: o.port });
  console.log(`LocalMIM Studio: ${url}`);
  for (const other of urls.slice(1)) console.log(`  also: ${other}`);
  const stop = async () => {
    console.error('stopping: pausing running runs (they checkpoint first)…');
    server.close();
    await service.shutdown();
    process.exit(0);
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}
