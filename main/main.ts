import { app, BrowserWindow, dialog, ipcMain, Menu, session, shell, type IpcMainInvokeEvent, type WebContents } from 'electron';
import { join } from 'node:path';
import { APP_NAME } from '../core/home.js';
import { startServiceHost } from './service-host.js';
import { isAppUrl, isSafeExternal, menuTemplate, windowOptions } from './window.js';

const appRoot = app.getAppPath();
const rendererIndex = join(appRoot, 'renderer', 'dist', 'index.html');
const preload = join(import.meta.dirname, 'preload.cjs');

if (!app.requestSingleInstanceLock()) app.quit();
app.setName(APP_NAME);

let win: BrowserWindow | undefined;
let quitting = false;

function createWindow(): void {
  win = new BrowserWindow(windowOptions(preload, { packaged: app.isPackaged }));
  win.once('ready-to-show', () => win?.show());
  void win.loadFile(rendererIndex);
}

/** Every web contents, ours or any other, stays on the app's page: no navigation, new windows or webviews. */
function guard(contents: WebContents): void {
  contents.setWindowOpenHandler(({ url }) => {
    if (isSafeExternal(url)) void shell.openExternal(url);
    return { action: 'deny' };
  });
  contents.on('will-navigate', (e) => {
    if (!isAppUrl(e.url, rendererIndex)) e.preventDefault();
  });
  contents.on('will-redirect', (e) => {
    if (!isAppUrl(e.url, rendererIndex)) e.preventDefault();
  });
  contents.on('will-attach-webview', (e) => e.preventDefault());
}

app.on('web-contents-created', (_e, contents) => guard(contents));

/** Every IPC message must come from our own page, in the top frame. */
function trusted(e: IpcMainInvokeEvent): boolean {
  return !!e.senderFrame && e.senderFrame === e.sender.mainFrame && isAppUrl(e.senderFrame.url, rendererIndex);
}

app.on('second-instance', () => {
  if (win?.isMinimized()) win.restore();
  win?.focus();
});

void app.whenReady().then(() => {
  session.defaultSession.setPermissionRequestHandler((_wc, _permission, cb) => cb(false));
  session.defaultSession.setPermissionCheckHandler(() => false);
  const host = startServiceHost(appRoot, app.isPackaged);
  host.onEvent((e) => win?.webContents.send('event', e));
  ipcMain.handle('api', async (e, method: unknown, args: unknown) => {
    if (!trusted(e)) return { ok: false, error: { kind: 'forbidden', message: 'untrusted sender' } };
    if (typeof method !== 'string' || method.length > 100)
      return { ok: false, error: { kind: 'bad-request', message: 'method must be a string' } };
    return host.call(method, args); // the service validates the arguments against the API's schemas
  });
  ipcMain.handle('pickFolder', async (e) => {
    if (!trusted(e) || !win) return null;
    const r = await dialog.showOpenDialog(win, { properties: ['openDirectory'], title: 'Choose a folder of images' });
    return r.canceled ? null : (r.filePaths[0] ?? null);
  });
  Menu.setApplicationMenu(Menu.buildFromTemplate(menuTemplate({ packaged: app.isPackaged, platform: process.platform })));
  createWindow();
  app.on('activate', () => BrowserWindow.getAllWindows().length === 0 && createWindow());
  // On quit, running runs checkpoint and are marked paused before the app exits.
  app.on('before-quit', (e) => {
    if (quitting) return;
    e.preventDefault();
    quitting = true;
    void host.shutdown().then(() => app.quit());
  });
});

app.on('window-all-closed', () => {
  if (process.platform !== 'darwin') app.quit();
});
