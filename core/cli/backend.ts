import { homeDir } from '../home.js';
import { launchNodeJob } from '../jobs/launch.js';
import { hostService } from '../service/host.js';
import { parse } from './args.js';

export const summary = '(internal) host the service for the Electron window, over IPC';

export async function run(argv: string[]): Promise<void> {
  parse(argv, {}, { usage: 'localmim backend (started by the desktop app, not by hand)', summary });
  hostService(homeDir(), () => launchNodeJob());
}
