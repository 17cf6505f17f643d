import type { ApiEvent, Args, Method } from '../../../core/api';
import type { ServiceResult } from '../../../core/service/service';

/** One API, two transports: Electron's preload bridge, or HTTP + server-sent events from `localmim serve`. */
export interface Transport {
  call(method: string, args: unknown): Promise<unknown>;
  subscribe(listener: (e: ApiEvent) => void): () => void;
  /** Electron only: the native folder picker. */
  pickFolder?(): Promise<string | null>;
}

declare global {
  interface Window {
    localmim?: Transport;
  }
}

const http: Transport = {
  async call(method, args) {
    // The server takes only same-origin JSON calls (Origin, Sec-Fetch-Site and Content-Type are checked).
    const res = await fetch(`/api/${method}`, {
      method: 'POST',
      mode: 'same-origin',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(args ?? {}),
    });
    const body = (await res.json()) as { ok: boolean; result?: unknown; error?: { message: string } };
    if (!body.ok) throw new Error(body.error?.message ?? `HTTP ${res.status}`);
    return body.result;
  },
  subscribe(listener) {
    const source = new EventSource('/api/events');
    source.onmessage = (e) => listener(JSON.parse(e.data as string) as ApiEvent);
    return () => source.close();
  },
};

export const transport: Transport = window.localmim ?? http;

export function call<M extends Method>(method: M, args: Args<M>): Promise<ServiceResult<M>> {
  return transport.call(method, args) as Promise<ServiceResult<M>>;
}

export type { ApiEvent, Args };
export type Result<M extends Method> = ServiceResult<M>;
