import type { ApiEvent } from '../api.js';
import { ApiError } from '../api.js';
import type { Launcher } from '../jobs/protocol.js';
import { Service } from './service.js';

/** Messages between the Electron main process and the process hosting the service. */
export type HostRequest = { id: number; method: string; args: unknown } | { shutdown: true };
export type HostReply =
  | { id: number; ok: true; result: unknown }
  | { id: number; ok: false; error: { kind: string; message: string } }
  | { event: ApiEvent }
  | { shutdownDone: true };

/**
 * Runs the service in this process for an Electron main process that only relays: the database and
 * the job processes live here, so the window's process never blocks on them. The channel is Electron's
 * utility-process port when packaged, Node's IPC when developing.
 */
export function hostService(home: string, launch: Launcher): void {
  const parentPort = (
    process as unknown as { parentPort?: { on(e: 'message', cb: (e: { data: unknown }) => void): void; postMessage(m: unknown): void } }
  ).parentPort;
  const post = (m: HostReply) => (parentPort ? parentPort.postMessage(m) : process.send!(m));
  const service = new Service(home, launch);
  service.subscribe((event) => post({ event }));
  const onMessage = async (m: HostRequest) => {
    if ('shutdown' in m) {
      await service.shutdown();
      post({ shutdownDone: true });
      return;
    }
    try {
      post({ id: m.id, ok: true, result: await service.call(m.method, m.args) });
    } catch (err) {
      post({ id: m.id, ok: false, error: { kind: err instanceof ApiError ? err.kind : 'internal', message: (err as Error).message } });
    }
  };
  if (parentPort) parentPort.on('message', (e) => void onMessage(e.data as HostRequest));
  else process.on('message', (m) => void onMessage(m as HostRequest));
}
