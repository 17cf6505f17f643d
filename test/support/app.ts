import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll } from 'vitest';
import { ensureBuilt } from './cli.js';
import { pathOf } from './requirements.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const ARTIFACTS = join(ROOT, 'test-artifacts');

/** The app as a person uses it: `localmim serve` on a fresh data folder, and a page of headless Chromium on it. */
export interface App {
  home: string;
  /** The served app's address, with its token. */
  url: string;
  page: Page;
  /** Console errors and uncaught exceptions of the page. */
  consoleErrors: string[];
  /** A full-page screenshot into test-artifacts/. */
  shot: (name: string) => Promise<Buffer>;
}

/** Starts the app before the enclosing suite's tests and stops it after them; `env` is the server's. */
export function appInChromium(name: string, env: NodeJS.ProcessEnv = {}): App {
  let server: ChildProcess | undefined;
  let browser: Browser | undefined;
  const app: App = {
    home: '',
    url: '',
    page: undefined as unknown as Page,
    consoleErrors: [],
    shot: (shot) => app.page.screenshot({ path: join(ARTIFACTS, `${shot}.png`), fullPage: true }),
  };
  beforeAll(async () => {
    ensureBuilt();
    app.home = mkdtempSync(join(tmpdir(), `localmim-${name}-`));
    mkdirSync(ARTIFACTS, { recursive: true });
    const args = [join(ROOT, 'bin/localmim.js'), 'serve', '--port', '0', '--home', app.home, '--preview-every', '5'];
    // Its own process group, so that its job processes go with it at the end.
    server = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ...env }, detached: true });
    app.url = await new Promise<string>((resolve) =>
      createInterface({ input: server!.stdout! }).on('line', (l) => l.startsWith('LocalMIM Studio: ') && resolve(l.slice(17))),
    );
    browser = await chromium.launch({
      executablePath: pathOf('chromium'),
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    app.page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    app.page.on('console', (m) => m.type() === 'error' && app.consoleErrors.push(m.text()));
    app.page.on('pageerror', (e) => app.consoleErrors.push(e.message));
  });
  afterAll(async () => {
    await browser?.close();
    server?.kill('SIGTERM');
    await new Promise((r) => server?.once('exit', r));
    // A job may still be computing a fine-tune's baselines after the server has gone (core/runs/job.ts): it goes too.
    try {
      process.kill(-server!.pid!, 'SIGKILL');
    } catch {
      // none was left
    }
    rmSync(app.home, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
  });
  return app;
}
