import type { BrowserWindowConstructorOptions } from 'electron';

/** The window's security settings, kept in one pure function so that a test can read them. */
export function windowOptions(preload: string): BrowserWindowConstructorOptions {
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
    },
  };
}

/** Only the app's own bundled page may call the API or be navigated to. */
export function isAppUrl(url: string, rendererIndex: string): boolean {
  try {
    const u = new URL(url);
    return u.protocol === 'file:' && decodeURIComponent(u.pathname) === rendererIndex;
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
