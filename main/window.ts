import type { BrowserWindowConstructorOptions, MenuItemConstructorOptions } from 'electron';
import path, { type PlatformPath } from 'node:path';
import { pathToFileURL } from 'node:url';

/** The window's security settings, kept in one pure function so that a test can read them. */
export function windowOptions(preload: string, o: { packaged: boolean }): BrowserWindowConstructorOptions {
  return {
    width: 1280,
    height: 860,
    minWidth: 800,
    minHeight: 600,
    title: 'LocalMIM Studio',
    show: false,
    webPreferences: {
      preload,
      contextIsolation: true,
      sandbox: true,
      nodeIntegration: false,
      nodeIntegrationInWorker: false,
      webSecurity: true,
      allowRunningInsecureContent: false,
      webviewTag: false,
      spellcheck: false,
      devTools: !o.packaged,
    },
  };
}

/** The application menu; DevTools only in a development build. */
export function menuTemplate(o: { packaged: boolean; platform: NodeJS.Platform }): MenuItemConstructorOptions[] {
  const devTools: MenuItemConstructorOptions[] = o.packaged ? [] : [{ role: 'toggleDevTools' }];
  return [
    { role: o.platform === 'darwin' ? 'appMenu' : 'fileMenu' },
    { role: 'editMenu' },
    {
      label: 'View',
      submenu: [{ role: 'reload' }, ...devTools, { type: 'separator' }, { role: 'resetZoom' }, { role: 'zoomIn' }, { role: 'zoomOut' }],
    },
    { role: 'windowMenu' },
  ];
}

/**
 * Only the app's own bundled page may call the API or be navigated to. Both sides are compared as file
 * URLs, the index's built with `p`'s flavour of paths (Windows paths are no URL paths: `C:\…` against
 * `/C:/…`), decoded, and case-blind where the file system is.
 */
export function isAppUrl(url: string, rendererIndex: string, p: PlatformPath = path): boolean {
  const windows = p.sep === '\\';
  const key = (u: URL) => {
    const k = `${u.host}${decodeURIComponent(u.pathname)}`;
    return windows ? k.toLowerCase() : k;
  };
  try {
    const u = new URL(url);
    return u.protocol === 'file:' && key(u) === key(pathToFileURL(rendererIndex, { windows }));
  } catch {
    return false;
  }
}

/** Links that may open in the user's browser: https only. */
export function isSafeExternal(url: string): boolean {
  try {
    return new URL(url).protocol === 'https:';
  } catch {
    return false;
  }
}
