import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { JobHandle, JobMessage } from './protocol.js';

const BIN = fileURLToPath(new URL('../../bin/localmim.js', import.meta.url));

/**
 * A job in a Node child process, talking over Node's IPC channel: `localmim job` from a checkout, or a
 * bundled job script (`dist/main/job-entry.js`) in the packaged app.
 */
export function launchNodeJob(script = BIN, args = ['job']): JobHandle {
  const child = fork(script, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'advanced' });
  return {
    pid: child.pid,
    send: (msg) => child.connected && child.send(msg),
    onMessage: (cb) => child.on('message', (m) => cb(m as JobMessage)),
    onExit: (cb) => child.on('exit', (code) => cb(code)),
    kill: () => child.kill('SIGKILL'),
  };
}
