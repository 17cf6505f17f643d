import { contextBridge, ipcRenderer, type IpcRendererEvent } from 'electron';
import type { ApiEvent } from '../core/api.js';

// The renderer's only door to the app: three functions, never ipcRenderer itself.
contextBridge.exposeInMainWorld('localmim', {
  async call(method: string, args: unknown): Promise<unknown> {
    const r = (await ipcRenderer.invoke('api', String(method), args)) as { ok: boolean; result?: unknown; error?: { message: string } };
    if (!r.ok) throw new Error(r.error?.message ?? 'request failed');
    return r.result;
  },
  subscribe(listener: (e: ApiEvent) => void): () => void {
    const handler = (_: IpcRendererEvent, e: ApiEvent) => listener(e);
    ipcRenderer.on('event', handler);
    return () => ipcRenderer.removeListener('event', handler);
  },
  pickFolder: (): Promise<string | null> => ipcRenderer.invoke('pickFolder') as Promise<string | null>,
});
