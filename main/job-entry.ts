// Entry of a job process in the packaged app (bundled by scripts/build-main.js).
import { serveJob } from '../core/jobs/worker.js';

serveJob();
