import { randomBytes, timingSafeEqual } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { extname, resolve, sep } from 'node:path';
import { ApiError } from '../api.js';
import type { Service } from '../service/service.js';

export interface ServeOptions {
  service: Service;
  /** The built renderer (index.html and assets); nothing outside it is ever served. */
  rendererDir: string;
  host: string;
  port: number;
  token?: string;
}

/** The renderer's Content-Security-Policy, shared with the Electron window. */
export const CSP =
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript',
  '.css': 'text/css',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.json': 'application/json',
};
const STATUS = { 'bad-request': 400, forbidden: 403, 'not-found': 404, conflict: 409 } as const;
const COOKIE = 'localmim_token';

/**
 * The API over HTTP (`POST /api/<method>`) and server-sent events (`GET /api/events`), and the built
 * renderer. Every request needs the token: in the URL once (`/?token=…`, which sets a SameSite=Strict
 * cookie), then from that cookie or an `Authorization: Bearer` header. Only loopback Host headers pass.
 */
export function startServer(o: ServeOptions): Promise<{ server: Server; url: string; token: string }> {
  const token = o.token ?? randomBytes(24).toString('base64url');
  const root = resolve(o.rendererDir);
  const server = createServer((req, res) => {
    handle(req, res).catch((err: Error) => json(res, 500, { ok: false, error: { kind: 'internal', message: err.message } }));
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const port = (server.address() as { port: number }).port;
    const allowedHosts = new Set([`127.0.0.1:${port}`, `localhost:${port}`, `[::1]:${port}`, `${o.host}:${port}`]);
    if (!allowedHosts.has(req.headers.host ?? ''))
      return json(res, 403, { ok: false, error: { kind: 'forbidden', message: 'unexpected Host header' } });
    const url = new URL(req.url ?? '/', `http://${req.headers.host}`);
    const given = url.searchParams.get('token') ?? bearer(req) ?? cookie(req, COOKIE);
    if (!given || !same(given, token))
      return json(res, 403, {
        ok: false,
        error: { kind: 'forbidden', message: 'missing or wrong token: open the URL that localmim serve printed' },
      });
    if (url.searchParams.has('token')) res.setHeader('Set-Cookie', `${COOKIE}=${token}; HttpOnly; SameSite=Strict; Path=/`);

    if (url.pathname === '/api/events' && req.method === 'GET') return events(res);
    if (url.pathname.startsWith('/api/')) {
      if (req.method !== 'POST') return json(res, 405, { ok: false, error: { kind: 'bad-request', message: 'API calls are POST' } });
      let args: unknown;
      try {
        const body = await readBody(req, 1 << 20);
        args = body.length ? JSON.parse(body) : {};
      } catch (err) {
        return json(res, 400, { ok: false, error: { kind: 'bad-request', message: `request body: ${(err as Error).message}` } });
      }
      try {
        return json(res, 200, { ok: true, result: await o.service.call(url.pathname.slice(5), args) });
      } catch (err) {
        if (err instanceof ApiError) return json(res, STATUS[err.kind], { ok: false, error: { kind: err.kind, message: err.message } });
        throw err;
      }
    }
    if (req.method !== 'GET' && req.method !== 'HEAD')
      return json(res, 405, { ok: false, error: { kind: 'bad-request', message: 'method not allowed' } });
    return file(res, url.pathname);
  }

  function events(res: ServerResponse): void {
    res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-store', Connection: 'keep-alive' });
    res.write(': connected\n\n');
    const unsubscribe = o.service.subscribe((e) => res.write(`data: ${JSON.stringify(e)}\n\n`));
    const keepAlive = setInterval(() => res.write(': keep-alive\n\n'), 15_000);
    res.on('close', () => {
      unsubscribe();
      clearInterval(keepAlive);
    });
  }

  function file(res: ServerResponse, pathname: string): void {
    let rel: string;
    try {
      rel = decodeURIComponent(pathname);
    } catch {
      return json(res, 400, { ok: false, error: { kind: 'bad-request', message: 'bad path' } });
    }
    const path = resolve(root, '.' + (rel === '/' ? '/index.html' : rel));
    if (!path.startsWith(root + sep) || rel.includes('\0'))
      return json(res, 403, { ok: false, error: { kind: 'forbidden', message: 'path outside the app' } });
    if (!existsSync(path) || !statSync(path).isFile())
      return json(res, 404, { ok: false, error: { kind: 'not-found', message: 'no such file' } });
    res.writeHead(200, {
      'Content-Type': TYPES[extname(path)] ?? 'application/octet-stream',
      'Content-Security-Policy': CSP,
      'X-Content-Type-Options': 'nosniff',
      'Referrer-Policy': 'no-referrer',
    });
    res.end(readFileSync(path));
  }

  return new Promise((resolvePromise, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => {
      const { port } = server.address() as { port: number };
      const host = o.host.includes(':') ? `[${o.host}]` : o.host;
      resolvePromise({ server, url: `http://${host}:${port}/?token=${token}`, token });
    });
  });
}

function json(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store', 'X-Content-Type-Options': 'nosniff' });
  res.end(JSON.stringify(body));
}

function bearer(req: IncomingMessage): string | undefined {
  const h = req.headers.authorization;
  return h?.startsWith('Bearer ') ? h.slice(7) : undefined;
}

function cookie(req: IncomingMessage, name: string): string | undefined {
  return req.headers.cookie
    ?.split(';')
    .map((c) => c.trim().split('='))
    .find(([k]) => k === name)?.[1];
}

function same(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

function readBody(req: IncomingMessage, limit: number): Promise<string> {
  return new Promise((resolveBody, reject) => {
    let size = 0;
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > limit) {
        reject(new Error(`larger than ${limit} bytes`));
        req.destroy();
      } else chunks.push(c);
    });
    req.on('end', () => resolveBody(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}
