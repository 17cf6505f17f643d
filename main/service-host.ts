import { fork } from 'node:child_process';
import { join } from 'node:path';
import { utilityProcess } from 'electron';
import type { HostReply, HostRequest } from '../core/service/host.js';

export interface ServiceHost {
  call(method: string, args: unknown): Promise<{ ok: boolean; result?: unknown; error?: { kind: string; message: string } }>;
  onEvent(cb: (e: unknown) => void): void;
  shutdown(): Promise<void>;
}

/**
 * Starts the process that hosts the service (database, job processes). Packaged: an Electron utility
 * process, whose native modules electron-builder rebuilt for Electron. From a checkout (`npm start`):
 * a plain Node process running `localmim backend`, as node_modules there are built for Node.
 */
export function startServiceHost(appRoot: string, packaged: boolean): ServiceHost {
  const channel = packaged ? utilityChannel(join(import.meta.dirname, 'service-host-entry.js')) : nodeChannel(appRoot);
  let next = 1;
  const pending = new Map<number, (r: HostReply) => void>();
  const events: ((e: unknown) => void)[] = [];
  let done: (() => void) | undefined;
  channel.onMessage((m) => {
    if ('event' in m) events.forEach((cb) => cb(m.event));
    else if ('shutdownDone' in m) done?.();
    else {
      pending.get(m.id)?.(m);
      pending.delete(m.id);
    }
  });
  return {
    call: (method, args) =>
      new Promise((resolve) => {
        const id = next++;
        pending.set(id, (r) => resolve(r as { ok: boolean }));
        channel.send({ id, method, args });
      }),
    onEvent: (cb) => events.push(cb),
    shutdown: () =>
      new Promise((resolve) => {
        done = resolve;
        channel.send({ shutdown: true });
        setTimeout(resolve, 90_000);
      }),
  };
}

interface Channel {
  send(m: HostRequest): void;
  onMessage(cb: (m: HostReply) => void): void;
}

function utilityChannel(script: string): Channel {
  const child = utilityProcess.fork(script, [], { serviceName: 'LocalMIM Studio service' });
  return { send: (m) => child.postMessage(m), onMessage: (cb) => child.on('message', (m) => cb(m as HostReply)) };
}

function nodeChannel(appRoot: string): Channel {
  const node = process.env.LOCALMIM_NODE ?? 'node';
  const child = fork(join(appRoot, 'bin', 'localmim.js'), ['backend'], { execPath: node, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  return { send: (m) => child.send(m), onMessage: (cb) => child.on('message', (m) => cb(m as HostReply)) };
}
