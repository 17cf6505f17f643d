import path from 'node:path';
import { describe, expect, test } from 'vitest';
import { isAppUrl, isSafeExternal, menuTemplate, windowOptions } from '../main/window.js';

// No Electron binary here: these are the pure parts of the window's security, which main/main.ts applies.
describe('Electron window', () => {
  test.each([false, true])('isolation, sandbox and no Node in the renderer (packaged: %s)', (packaged) => {
    const o = windowOptions('/app/preload.cjs', { packaged });
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

  test('DevTools only in a development build: neither in the window nor in the menu when packaged', () => {
    expect(windowOptions('/p.cjs', { packaged: true }).webPreferences?.devTools).toBe(false);
    expect(windowOptions('/p.cjs', { packaged: false }).webPreferences?.devTools).toBe(true);
    const roles = (packaged: boolean) => JSON.stringify(menuTemplate({ packaged, platform: 'win32' }));
    expect(roles(true)).not.toContain('toggleDevTools');
    expect(roles(false)).toContain('toggleDevTools');
    expect(JSON.stringify(menuTemplate({ packaged: true, platform: 'darwin' }))).toContain('appMenu');
  });

  test('only the bundled page is trusted; only https opens outside', () => {
    expect(isAppUrl('file:///app/renderer/dist/index.html', '/app/renderer/dist/index.html', path.posix)).toBe(true);
    expect(isAppUrl('file:///app/renderer/dist/index.html#/runs/3', '/app/renderer/dist/index.html', path.posix)).toBe(true);
    expect(isAppUrl('file:///etc/passwd', '/app/renderer/dist/index.html', path.posix)).toBe(false);
    expect(isAppUrl('https://example.com/', '/app/renderer/dist/index.html', path.posix)).toBe(false);
    expect(isAppUrl('not a url', '/app/renderer/dist/index.html', path.posix)).toBe(false);
    expect(isSafeExternal('https://arxiv.org/abs/2303.05251')).toBe(true);
    expect(isSafeExternal('file:///etc/passwd')).toBe(false);
    expect(isSafeExternal('javascript:alert(1)')).toBe(false);
  });

  test('POSIX paths with spaces and percent signs match their encoded URL; case matters there', () => {
    const index = '/home/ana/My Apps/100% LocalMIM/renderer/dist/index.html';
    expect(isAppUrl('file:///home/ana/My%20Apps/100%25%20LocalMIM/renderer/dist/index.html', index, path.posix)).toBe(true);
    expect(isAppUrl('file:///home/ana/my%20apps/100%25%20LocalMIM/renderer/dist/index.html', index, path.posix)).toBe(false);
    expect(isAppUrl('file:///home/ana/My%20Apps/100%%20LocalMIM/renderer/dist/index.html', index, path.posix)).toBe(false);
  });

  test('Windows: the page Electron loaded from C:\\… is trusted (file:///C:/… with encoding), other files are not', () => {
    const index = 'C:\\Program Files\\LocalMIM Studio\\resources\\app.asar\\renderer\\dist\\index.html';
    const url = 'file:///C:/Program%20Files/LocalMIM%20Studio/resources/app.asar/renderer/dist/index.html';
    expect(isAppUrl(url, index, path.win32)).toBe(true);
    expect(isAppUrl(`${url}#/new?dataset=1`, index, path.win32)).toBe(true);
    expect(isAppUrl(url.replace('file:///C:', 'file:///c:'), index, path.win32)).toBe(true);
    expect(isAppUrl(url.replace('Studio', 'Studio%20Evil'), index, path.win32)).toBe(false);
    expect(isAppUrl(url.replace('file:///C:', 'file:///D:'), index, path.win32)).toBe(false);
    expect(isAppUrl('file:///C:/Windows/System32/drivers/etc/hosts', index, path.win32)).toBe(false);
    expect(isAppUrl(url.replace('file:', 'https:'), index, path.win32)).toBe(false);
  });

  test('Windows: percent signs in the install path, and an app on a network share', () => {
    expect(isAppUrl('file:///D:/Apps/100%25/app/index.html', 'D:\\Apps\\100%\\app\\index.html', path.win32)).toBe(true);
    expect(isAppUrl('file://fileserver/share/Local%20MIM/index.html', '\\\\fileserver\\share\\Local MIM\\index.html', path.win32)).toBe(
      true,
    );
    expect(isAppUrl('file:///share/Local%20MIM/index.html', '\\\\fileserver\\share\\Local MIM\\index.html', path.win32)).toBe(false);
  });
});
