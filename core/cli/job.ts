import { serveJob } from '../jobs/worker.js';
import { parse } from './args.js';

export const summary = '(internal) run one job sent by the app over IPC';

export async function run(argv: string[]): Promise<void> {
  parse(argv, {}, { usage: 'localmim job (started by the app, not by hand)', summary });
  serveJob();
}
