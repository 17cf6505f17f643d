import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { hostname, networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { launchNodeJob } from '../core/jobs/launch.js';
import { allowedHosts, serveUrls, startServer, type Machine } from '../core/server/server.js';
import { Service } from '../core/service/service.js';
import { describeWith, pathOf } from './support/requirements.js';

const dir = mkdtempSync(join(tmpdir(), 'localmim-server-'));
const ui = join(dir, 'ui');
mkdirSync(join(ui, 'assets'), { recursive: true });
writeFileSync(join(ui, 'index.html'), '<!doctype html><title>ui</title>');
writeFileSync(join(ui, 'assets', 'app.js'), 'console.log(1)');
writeFileSync(join(dir, 'secret.txt'), 'TOP SECRET CONTENT');

const service = new Service(join(dir, 'home'), () => launchNodeJob());
let port = 0;
let token = '';
let server: Server;
let close: () => void;
beforeAll(async () => {
  const s = await startServer({ service, rendererDir: ui, host: '127.0.0.1', port: 0 });
  server = s.server;
  port = (s.server.address() as { port: number }).port;
  token = s.token;
  close = () => s.server.close();
});
afterAll(async () => {
  close();
  await service.shutdown();
  rmSync(dir, { recursive: true, force: true });
});

interface RawOptions {
  method?: string;
  body?: string | Buffer;
  /** Send the body in pieces, without a Content-Length. */
  chunked?: boolean;
  headers?: Record<string, string>;
  /** Where to connect (the Host header is separate); 127.0.0.1 and the test server's port by default. */
  to?: { host: string; port: number };
}

/** A raw HTTP request, so that paths reach the server exactly as written (no client-side normalisation). */
function raw(path: string, o: RawOptions = {}): Promise<{ status: number; body: string; headers: Record<string, unknown> }> {
  const to = o.to ?? { host: '127.0.0.1', port };
  return new Promise((resolve, reject) => {
    const req = request({ ...to, path, method: o.method ?? 'GET', headers: { Host: `127.0.0.1:${to.port}`, ...o.headers } }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode!, body, headers: res.headers }));
    });
    req.on('error', reject);
    if (!o.chunked) return req.end(o.body);
    const body = Buffer.from(o.body ?? '');
    for (let i = 0; i < body.length; i += 64 << 10) req.write(body.subarray(i, i + (64 << 10)));
    req.end();
  });
}

/** Only the status of a request (the event stream never ends: the connection is dropped once the head arrives). */
function status(path: string, headers: Record<string, string>): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, headers: { Host: `127.0.0.1:${port}`, ...headers } }, (res) => {
      resolve(res.statusCode!);
      res.destroy();
    });
    req.on('error', reject);
    req.end();
  });
}
const auth = () => ({ Authorization: `Bearer ${token}` });
const api = (method: string, body: unknown, headers: Record<string, string> = auth()) =>
  raw(`/api/${method}`, { method: 'POST', body: JSON.stringify(body), headers: { 'Content-Type': 'application/json', ...headers } });

describe('localmim serve', () => {
  test('the page needs the token, which then lives in a SameSite=Strict cookie; the page carries a strict CSP', async () => {
    expect((await raw('/')).status).toBe(403);
    expect((await raw('/?token=wrong')).status).toBe(403);
    // The token leaves the address bar at once: the page is reached again without it, the cookie carrying it.
    const first = await raw(`/?token=${token}&view=runs`);
    expect(first.status).toBe(303);
    expect(first.headers.location).toBe('/?view=runs');
    expect(String(first.headers['set-cookie'])).toMatch(/HttpOnly; SameSite=Strict/);
    const ok = await raw('/', { headers: { Cookie: `localmim_token_${port}=${token}` } });
    expect(ok.status).toBe(200);
    expect(String(ok.headers['content-security-policy'])).toMatch(/default-src 'self'; script-src 'self'/);
    expect((await raw('/assets/app.js', { headers: { Cookie: `localmim_token_${port}=${token}` } })).body).toBe('console.log(1)');
  });

  test("the token cookie is named for this server's port: cookies go to every port of a host, so another port's cookie opens nothing", async () => {
    expect(String((await raw(`/?token=${token}`)).headers['set-cookie'])).toMatch(new RegExp(`^localmim_token_${port}=${token};`));
    expect((await raw('/assets/app.js', { headers: { Cookie: `localmim_token=${token}` } })).status).toBe(403);
    expect((await raw('/assets/app.js', { headers: { Cookie: `localmim_token_${port + 1}=${token}` } })).status).toBe(403);
    expect((await api('app.info', {}, { Cookie: `localmim_token_${port + 1}=${token}` })).status).toBe(403);
    expect((await api('app.info', {}, { Cookie: `other=1; localmim_token_${port}=${token}` })).status).toBe(200);
  });

  test('API calls need Content-Type: application/json (a text/plain POST needs no CORS preflight, so any page could send one)', async () => {
    const post = (type?: string) =>
      raw('/api/app.info', { method: 'POST', body: '{}', headers: { ...auth(), ...(type && { 'Content-Type': type }) } });
    for (const type of ['text/plain', 'text/plain;charset=UTF-8', 'application/x-www-form-urlencoded', 'multipart/form-data', undefined]) {
      const r = await post(type);
      expect(r.status, String(type)).toBe(415);
      expect(JSON.parse(r.body)).toMatchObject({ ok: false, error: { kind: 'bad-request' } });
    }
    expect((await post('application/json; charset=utf-8')).status).toBe(200);
    expect((await post('Application/JSON')).status).toBe(200);
  });

  test('requests another origin sends (Origin) are refused, even with the token; our own origin passes', async () => {
    const withOrigin = (origin: string, host = `127.0.0.1:${port}`) => api('app.info', {}, { ...auth(), Origin: origin, Host: host });
    expect((await withOrigin(`http://127.0.0.1:${port}`)).status).toBe(200);
    expect((await withOrigin(`http://localhost:${port}`, `localhost:${port}`)).status).toBe(200);
    for (const origin of [
      `http://127.0.0.1:${port + 1}`,
      `http://localhost:${port}`,
      `https://127.0.0.1:${port}`,
      'null',
      'http://evil.example',
    ]) {
      const r = await withOrigin(origin);
      expect(r.status, origin).toBe(403);
      expect(JSON.parse(r.body).error.kind).toBe('forbidden');
    }
    const cookie = { Cookie: `localmim_token_${port}=${token}` };
    expect(await status('/api/events', { ...cookie, Origin: `http://127.0.0.1:${port + 1}` })).toBe(403);
    expect(await status('/assets/app.js', { ...cookie, Origin: `http://127.0.0.1:${port + 1}` })).toBe(403);
  });

  test('requests a browser marks as cross-site or same-site (another port of 127.0.0.1) are refused: API, event stream, files', async () => {
    const cookie = { Cookie: `localmim_token_${port}=${token}` };
    for (const site of ['same-site', 'cross-site']) {
      expect((await api('app.info', {}, { ...cookie, 'Sec-Fetch-Site': site })).status, site).toBe(403);
      expect(await status('/api/events', { ...cookie, 'Sec-Fetch-Site': site }), site).toBe(403);
      expect(await status('/assets/app.js', { ...cookie, 'Sec-Fetch-Site': site }), site).toBe(403);
      expect(await status(`/?token=${token}`, { 'Sec-Fetch-Site': site }), site).toBe(403);
    }
    expect((await api('app.info', {}, { ...cookie, 'Sec-Fetch-Site': 'same-origin' })).status).toBe(200);
    expect(await status('/api/events', { ...cookie, 'Sec-Fetch-Site': 'same-origin' })).toBe(200);
    expect(await status(`/?token=${token}`, { 'Sec-Fetch-Site': 'none' })).toBe(303);
  });

  test.each([false, true])('a 2 MiB body gets a 413 with a JSON error, not a reset connection (chunked: %s)', async (chunked) => {
    const body = Buffer.from(JSON.stringify({ config: 'x'.repeat(2 << 20) }));
    const r = await raw('/api/config.check', { method: 'POST', body, chunked, headers: { ...auth(), 'Content-Type': 'application/json' } });
    expect(r.status).toBe(413);
    expect(JSON.parse(r.body)).toMatchObject({ ok: false, error: { kind: 'too-large', message: expect.stringMatching(/1048576 bytes/) } });
    expect((await api('app.info', {})).status).toBe(200);
  });

  test('API calls without the right token are refused', async () => {
    expect((await api('app.info', {}, { Authorization: 'Bearer nope' })).status).toBe(403);
    expect((await api('app.info', {}, {})).status).toBe(403);
  });

  test('a foreign Host header is refused (DNS rebinding)', async () => {
    expect((await raw(`/?token=${token}`, { headers: { Host: 'evil.example:80' } })).status).toBe(403);
  });

  test.each(['/../secret.txt', '/%2e%2e/secret.txt', '/..%2fsecret.txt', '/assets/..%2f..%2fsecret.txt', '/%00', '/%E0%A4%A'])(
    'path traversal %s never reaches outside the app',
    async (path) => {
      const r = await raw(path, { headers: auth() });
      expect([400, 403, 404]).toContain(r.status);
      expect(r.body).not.toContain('TOP SECRET');
    },
  );

  test('bad arguments are rejected naming the field; unknown methods are 404', async () => {
    const bad = await api('runs.get', { id: 'seven' });
    expect(bad.status).toBe(400);
    expect(JSON.parse(bad.body).error.message).toMatch(/^runs\.get: id: /);
    expect((await api('datasets.add', { path: '' })).status).toBe(400);
    expect((await api('runs.pause', { id: 99 })).status).toBe(404);
    expect((await api('fs.readFile', { path: '/etc/passwd' })).status).toBe(404);
    expect((await api('__proto__', {})).status).toBe(404);
    expect((await raw('/api/app.info', { headers: auth() })).status).toBe(405);
    const notJson = await raw('/api/app.info', {
      method: 'POST',
      body: '{not json',
      headers: { ...auth(), 'Content-Type': 'application/json' },
    });
    expect(notJson.status).toBe(400);
  });

  test('an invalid run config is refused with field-named errors', async () => {
    const r = await api('config.check', { config: { model: { imgSize: 60, patchSize: 8 } } });
    expect(JSON.parse(r.body).result.errors).toContainEqual({
      path: 'model.imgSize',
      message: 'imgSize=60 must be a multiple of patchSize=8',
    });
  });

  test('a valid call answers', async () => {
    const r = await api('app.info', {});
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body).result.backend.chosen).toBeTruthy();
  });
});

const iface = (address: string, internal = false) =>
  ({ address, internal, netmask: '', mac: '', cidr: null, family: address.includes(':') ? 'IPv6' : 'IPv4', scopeid: 0 }) as const;
const machine: Machine = {
  hostname: 'Studio-PC',
  interfaces: {
    lo: [iface('127.0.0.1', true), iface('::1', true)],
    eth0: [iface('192.168.1.20'), iface('2001:db8::20'), iface('fe80::1')],
  },
};

describe('serve --host', () => {
  test('a wildcard host prints loopback first, then each of the machine’s own addresses, never 0.0.0.0', () => {
    expect(serveUrls('0.0.0.0', 5170, 'T', machine)).toEqual(['http://127.0.0.1:5170/?token=T', 'http://192.168.1.20:5170/?token=T']);
    expect(serveUrls('::', 5170, 'T', machine)).toEqual([
      'http://127.0.0.1:5170/?token=T',
      'http://192.168.1.20:5170/?token=T',
      'http://[2001:db8::20]:5170/?token=T',
    ]);
    expect(serveUrls('127.0.0.1', 5170, 'T', machine)).toEqual(['http://127.0.0.1:5170/?token=T']);
    expect(serveUrls('::1', 5170, 'T', machine)).toEqual(['http://[::1]:5170/?token=T']);
  });

  test('a wildcard host accepts the machine’s own names and addresses as Host; foreign names and other ports stay refused', () => {
    const wild = allowedHosts('0.0.0.0', 5170, machine);
    for (const h of ['127.0.0.1', 'localhost', '[::1]', '192.168.1.20', '[2001:db8::20]', 'studio-pc'])
      expect(wild.has(`${h}:5170`), h).toBe(true);
    for (const h of ['evil.example:5170', '192.168.1.21:5170', '192.168.1.20:80', '192.168.1.20', 'studio-pc.evil.example:5170'])
      expect(wild.has(h), h).toBe(false);
    const local = allowedHosts('127.0.0.1', 5170, machine);
    expect(local.has('127.0.0.1:5170')).toBe(true);
    expect(local.has('192.168.1.20:5170')).toBe(false);
    expect(local.has('studio-pc:5170')).toBe(false);
  });

  test('bound to 0.0.0.0, every printed URL opens the app, the hostname works as Host, a foreign Host is refused', async () => {
    const s = await startServer({ service, rendererDir: ui, host: '0.0.0.0', port: 0 });
    try {
      const p = (s.server.address() as { port: number }).port;
      expect(s.url).toBe(s.urls[0]);
      expect(s.urls[0]).toBe(`http://127.0.0.1:${p}/?token=${s.token}`);
      const own = Object.values(networkInterfaces()).flatMap((l) => l ?? []);
      for (const a of own.filter((a) => !a.internal && a.family === 'IPv4'))
        expect(s.urls).toContain(`http://${a.address}:${p}/?token=${s.token}`);
      for (const u of s.urls.map((x) => new URL(x))) {
        const to = { host: u.hostname, port: p };
        expect((await raw(u.pathname + u.search, { to, headers: { Host: u.host } })).status, u.host).toBe(303); // opens: on to the page without the token
        expect((await raw('/', { to, headers: { Host: u.host } })).status, u.host).toBe(403);
      }
      const auth = { Authorization: `Bearer ${s.token}` };
      const to = { host: '127.0.0.1', port: p };
      expect((await raw('/', { to, headers: { ...auth, Host: `${hostname()}:${p}` } })).status).toBe(200);
      expect((await raw('/', { to, headers: { ...auth, Host: `evil.example:${p}` } })).status).toBe(403);
    } finally {
      s.server.close();
    }
  });
});

/** Run in a page: a JSON API call, and the event stream, against `base` ('' for the page's own origin). */
const probe = (base: string) => `(async (base) => {
  const call = await fetch(base + '/api/app.info', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}', credentials: 'include' })
    .then((r) => r.status, () => 'blocked');
  const simple = await fetch(base + '/api/app.info', { method: 'POST', mode: 'no-cors', credentials: 'include', body: '{}' }).then((r) => r.type, () => 'blocked');
  const events = await new Promise((resolve) => {
    const s = new EventSource(base + '/api/events', { withCredentials: true });
    s.onopen = () => (s.close(), resolve('open'));
    s.onerror = () => (s.close(), resolve('error'));
  });
  return { call, simple, events };
})(${JSON.stringify(base)})`;

describeWith('chromium')('in Chromium', () => {
  test('a page on another port of 127.0.0.1 can neither call the API nor open the event stream, though the browser holds the cookie; our own page can', async () => {
    const seen: [IncomingMessage, ServerResponse][] = [];
    const log = (req: IncomingMessage, res: ServerResponse) => req.url?.startsWith('/api/') && seen.push([req, res]);
    // What the server answered to each API request so far (an event stream's answer is its head; the stream may stay open).
    const answered = () => seen.map(([req, res]) => `${req.method} ${req.url} ${res.headersSent ? res.statusCode : '…'}`).sort();
    const elsewhere = createServer((_req, res) => res.writeHead(200, { 'Content-Type': 'text/html' }).end('<title>elsewhere</title>'));
    await new Promise<void>((r) => elsewhere.listen(0, '127.0.0.1', r));
    const browser = await chromium.launch({ executablePath: pathOf('chromium'), args: ['--headless', '--no-sandbox', '--disable-gpu'] });
    server.on('request', log);
    try {
      const page = await browser.newPage();
      await page.goto(`http://127.0.0.1:${port}/?token=${token}`);
      expect(page.url()).toBe(`http://127.0.0.1:${port}/`); // no token in the address bar
      expect(await page.evaluate(probe(''))).toEqual({ call: 200, simple: 'basic', events: 'open' });
      expect(answered()).toEqual(['GET /api/events 200', 'POST /api/app.info 200', 'POST /api/app.info 415']);

      seen.length = 0;
      await page.goto(`http://127.0.0.1:${(elsewhere.address() as { port: number }).port}/`);
      expect(await page.evaluate(probe(`http://127.0.0.1:${port}`))).toEqual({ call: 'blocked', simple: 'opaque', events: 'error' });
      expect(answered()).toEqual(['GET /api/events 403', 'OPTIONS /api/app.info 403', 'POST /api/app.info 403']);
    } finally {
      server.off('request', log);
      await browser.close();
      elsewhere.close();
    }
  });
});
