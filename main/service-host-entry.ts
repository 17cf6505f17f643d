// Entry of the service's utility process in the packaged app (bundled by scripts/build-main.js).
import { join } from 'node:path';
import { homeDir } from '../core/home.js';
import { launchNodeJob } from '../core/jobs/launch.js';
import { hostService } from '../core/service/host.js';

hostService(homeDir(), () => launchNodeJob(join(import.meta.dirname, 'job-entry.js'), []));
