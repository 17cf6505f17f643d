import { randomBytes, timingSafeEqual } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { hostname, networkInterfaces, type NetworkInterfaceInfo } from 'node:os';
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
const STATUS = { 'bad-request': 400, forbidden: 403, 'not-found': 404, conflict: 409, busy: 429 } as const;
const JSON_HEADERS = { 'Content-Type': 'application/json', 'Cache-Control': 'no-store', 'X-Content-Type-Options': 'nosniff' };
const BODY_LIMIT = 1 << 20;
/** How long a too-large request may go on sending after its 413, before the connection is cut. */
const DRAIN_MS = 5_000;

/** What the server needs to know about the machine it runs on: its name and interface addresses. */
export interface Machine {
  hostname: string;
  interfaces: NodeJS.Dict<NetworkInterfaceInfo[]>;
}

const thisMachine = (): Machine => ({ hostname: hostname(), interfaces: networkInterfaces() });
const LOOPBACK = ['127.0.0.1', 'localhost', '[::1]'];
const bracket = (h: string) => (h.includes(':') ? `[${h}]` : h);
const isWildcard = (host: string) => host === '0.0.0.0' || host === '::';

/** Host names (no port) that reach this server: loopback, the bound host, and for a wildcard host the machine's own names. */
export function hostNames(host: string, machine: Machine): string[] {
  const names = [...LOOPBACK, bracket(host)];
  if (isWildcard(host)) names.push(machine.hostname, ...addresses(machine, true).map(bracket));
  return [...new Set(names.map((n) => n.toLowerCase()))];
}

/** `host:port` values accepted in the Host header; anything else is refused (DNS rebinding). */
export function allowedHosts(host: string, port: number, machine: Machine): Set<string> {
  return new Set(hostNames(host, machine).map((h) => `${h}:${port}`));
}

/** The URLs to print, loopback first; a wildcard host is no address a browser can open, so list the machine's own. */
export function serveUrls(host: string, port: number, token: string, machine: Machine): string[] {
  const hosts = isWildcard(host) ? ['127.0.0.1', ...addresses(machine, false).filter((a) => host === '::' || !a.includes(':'))] : [host];
  return [...new Set(hosts.map(bracket))].map((h) => `http://${h}:${port}/?token=${token}`);
}

/** The machine's interface addresses; link-local IPv6 ones (which need a zone a URL cannot carry) only where `all`. */
function addresses(machine: Machine, all: boolean): string[] {
  return Object.values(machine.interfaces)
    .flatMap((list) => list ?? [])
    .filter((a) => all || (!a.internal && !a.address.toLowerCase().startsWith('fe80:')))
    .map((a) => a.address);
}

/** Why a request must be refused as coming from another site, if it does. */
function crossSite(req: IncomingMessage, host: string): string | undefined {
  const origin = req.headers.origin;
  if (origin !== undefined && origin.toLowerCase() !== `http://${host}`) return 'request from another origin';
  const site = req.headers['sec-fetch-site'];
  if (site !== undefined && site !== 'same-origin' && site !== 'none') return 'request from another site';
  return undefined;
}

/**
 * The API over HTTP (`POST /api/<method>`, JSON bodies only) and server-sent events (`GET /api/events`),
 * and the built renderer. Every request needs the token: in the URL once (`/?token=…`, which sets a
 * cookie whose name carries the port, as cookies are shared by every port of a host), then from that
 * cookie or an `Authorization: Bearer` header. Only this machine's own Host names pass, and requests a
 * browser marks as coming from another origin or site are refused: other ports of 127.0.0.1 are the
 * same site to SameSite.
 */
export function startServer(o: ServeOptions): Promise<{ server: Server; url: string; urls: string[]; token: string }> {
  const token = o.token ?? randomBytes(24).toString('base64url');
  const root = resolve(o.rendererDir);
  const server = createServer((req, res) => {
    handle(req, res).catch((err: Error) => json(res, 500, { ok: false, error: { kind: 'internal', message: err.message } }));
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const port = (server.address() as { port: number }).port;
    const host = req.headers.host?.toLowerCase() ?? '';
    if (!allowedHosts(o.host, port, thisMachine()).has(host))
      return json(res, 403, { ok: false, error: { kind: 'forbidden', message: 'unexpected Host header' } });
    const foreign = crossSite(req, host);
    if (foreign) return json(res, 403, { ok: false, error: { kind: 'forbidden', message: foreign } });
    const url = new URL(req.url ?? '/', `http://${host}`);
    const cookieName = `localmim_token_${port}`;
    const given = url.searchParams.get('token') ?? bearer(req) ?? cookie(req, cookieName);
    if (!given || !same(given, token))
      return json(res, 403, {
        ok: false,
        error: { kind: 'forbidden', message: 'missing or wrong token: open the URL that localmim serve printed' },
      });
    if (url.searchParams.has('token')) res.setHeader('Set-Cookie', `${cookieName}=${token}; HttpOnly; SameSite=Strict; Path=/`);
    // The page's own URL drops the token at once (the cookie carries it), so it stays in no address bar or history.
    if (url.searchParams.has('token') && req.method === 'GET' && !url.pathname.startsWith('/api/')) {
      url.searchParams.delete('token');
      return void res.writeHead(303, { Location: url.pathname + url.search, 'Cache-Control': 'no-store' }).end();
    }

    if (url.pathname === '/api/events' && req.method === 'GET') return events(res);
    if (url.pathname.startsWith('/api/')) {
      if (req.method !== 'POST') return json(res, 405, { ok: false, error: { kind: 'bad-request', message: 'API calls are POST' } });
      // A browser sends text/plain across sites without asking first; application/json needs a CORS preflight, which fails here.
      if (req.headers['content-type']?.split(';')[0]?.trim().toLowerCase() !== 'application/json')
        return json(res, 415, { ok: false, error: { kind: 'bad-request', message: 'API calls need Content-Type: application/json' } });
      const body = await readBody(req, BODY_LIMIT);
      if (body === undefined) return tooLarge(req, res);
      let args: unknown;
      try {
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
      const urls = serveUrls(o.host, port, token, thisMachine());
      resolvePromise({ server, url: urls[0]!, urls, token });
    });
  });
}

function json(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, JSON_HEADERS);
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

/** The body as text, or undefined once it passes `limit` bytes (the rest is then read and dropped). */
function readBody(req: IncomingMessage, limit: number): Promise<string | undefined> {
  return new Promise((resolveBody, reject) => {
    if (Number(req.headers['content-length']) > limit) return resolveBody(undefined);
    let size = 0;
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size <= limit) chunks.push(c);
      else resolveBody(undefined);
    });
    req.on('end', () => resolveBody(size > limit ? undefined : Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

/**
 * Answers 413 at once, then reads and drops what the client still sends before closing: closing a socket
 * with unread data resets it, and the client would lose the answer. A client still sending after
 * DRAIN_MS is cut off.
 */
function tooLarge(req: IncomingMessage, res: ServerResponse): void {
  const body = JSON.stringify({ ok: false, error: { kind: 'too-large', message: `request body over ${BODY_LIMIT} bytes` } });
  res.writeHead(413, { ...JSON_HEADERS, 'Content-Length': Buffer.byteLength(body), Connection: 'close' });
  res.write(body);
  const cutOff = setTimeout(() => req.socket.destroy(), DRAIN_MS).unref();
  const done = () => {
    clearTimeout(cutOff);
    res.end();
  };
  if (req.complete) return done();
  req.once('end', done);
  req.resume();
}
