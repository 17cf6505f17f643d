import { serveJob } from '../jobs/worker.js';

export const summary = '(internal) run one job sent by the app over IPC';

export async function run(): Promise<void> {
  serveJob();
}
