import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { launchNodeJob } from '../core/jobs/launch.js';
import { startServer } from '../core/server/server.js';
import { Service } from '../core/service/service.js';
import { isAppUrl, isSafeExternal, windowOptions } from '../main/window.js';

const dir = mkdtempSync(join(tmpdir(), 'localmim-server-'));
const ui = join(dir, 'ui');
mkdirSync(join(ui, 'assets'), { recursive: true });
writeFileSync(join(ui, 'index.html'), '<!doctype html><title>ui</title>');
writeFileSync(join(ui, 'assets', 'app.js'), 'console.log(1)');
writeFileSync(join(dir, 'secret.txt'), 'TOP SECRET CONTENT');

const service = new Service(join(dir, 'home'), () => launchNodeJob());
let port = 0;
let token = '';
let close: () => void;
beforeAll(async () => {
  const s = await startServer({ service, rendererDir: ui, host: '127.0.0.1', port: 0 });
  port = (s.server.address() as { port: number }).port;
  token = s.token;
  close = () => s.server.close();
});
afterAll(async () => {
  close();
  await service.shutdown();
  rmSync(dir, { recursive: true, force: true });
});

/** A raw HTTP request, so that paths reach the server exactly as written (no client-side normalisation). */
function raw(
  path: string,
  o: { method?: string; body?: string; headers?: Record<string, string> } = {},
): Promise<{ status: number; body: string; headers: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port, path, method: o.method ?? 'GET', headers: { Host: `127.0.0.1:${port}`, ...o.headers } },
      (res) => {
        let body = '';
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode!, body, headers: res.headers }));
      },
    );
    req.on('error', reject);
    req.end(o.body);
  });
}
const auth = () => ({ Authorization: `Bearer ${token}` });
const api = (method: string, body: unknown, headers: Record<string, string> = auth()) =>
  raw(`/api/${method}`, { method: 'POST', body: JSON.stringify(body), headers: { ...headers, 'Content-Type': 'application/json' } });

describe('localmim serve', () => {
  test('the page needs the token, which then lives in a SameSite=Strict cookie; the page carries a strict CSP', async () => {
    expect((await raw('/')).status).toBe(403);
    expect((await raw('/?token=wrong')).status).toBe(403);
    const ok = await raw(`/?token=${token}`);
    expect(ok.status).toBe(200);
    expect(String(ok.headers['set-cookie'])).toMatch(/HttpOnly; SameSite=Strict/);
    expect(String(ok.headers['content-security-policy'])).toMatch(/default-src 'self'; script-src 'self'/);
    expect((await raw('/assets/app.js', { headers: { Cookie: `localmim_token=${token}` } })).body).toBe('console.log(1)');
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
    expect((await raw('/api/app.info', { method: 'POST', body: '{not json', headers: auth() })).status).toBe(400);
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

describe('Electron window', () => {
  test('isolation, sandbox and no Node in the renderer', () => {
    const o = windowOptions('/app/preload.cjs');
    expect(o.webPreferences).toMatchObject({
      contextIsolation: true,
      sandbox: true,
      nodeIntegration: false,
      nodeIntegrationInWorker: false,
      webSecurity: true,
      webviewTag: false,
      preload: '/app/preload.cjs',
    });
  });

  test('only the bundled page is trusted; only https opens outside', () => {
    expect(isAppUrl('file:///app/renderer/dist/index.html', '/app/renderer/dist/index.html')).toBe(true);
    expect(isAppUrl('file:///etc/passwd', '/app/renderer/dist/index.html')).toBe(false);
    expect(isAppUrl('https://example.com/', '/app/renderer/dist/index.html')).toBe(false);
    expect(isSafeExternal('https://arxiv.org/abs/2303.05251')).toBe(true);
    expect(isSafeExternal('file:///etc/passwd')).toBe(false);
    expect(isSafeExternal('javascript:alert(1)')).toBe(false);
  });
});
