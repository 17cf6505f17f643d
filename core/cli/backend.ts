import { homeDir } from '../home.js';
import { launchNodeJob } from '../jobs/launch.js';
import { hostService } from '../service/host.js';

export const summary = '(internal) host the service for the Electron window, over IPC';

export async function run(): Promise<void> {
  hostService(homeDir(), () => launchNodeJob());
}
