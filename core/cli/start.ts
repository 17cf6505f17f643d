import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { homeDir } from '../home.js';
import { homeFlag, parse } from './args.js';
import { serve } from './serve.js';

export const summary = 'open the desktop app, or serve it to a browser where Electron is not available';

/** The Electron binary's path, or why there is none. */
function electronBinary(): { path?: string; why?: string } {
  try {
    const path = createRequire(import.meta.url)('electron') as unknown;
    return typeof path === 'string' ? { path } : { why: 'the electron package did not return a binary path' };
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'MODULE_NOT_FOUND') return { why: 'the electron package is not installed: its binary download failed' };
    return {
      why: /failed to install correctly/.test(e.message) ? 'the Electron binary was not downloaded' : String(e.message).split('\n')[0],
    };
  }
}

export async function run(argv: string[]): Promise<void> {
  const { values } = parse(
    argv,
    {
      home: homeFlag,
      port: { type: 'string', default: '5170', arg: 'PORT', help: 'port of the browser UI, where Electron is not available' },
    },
    { usage: 'localmim start [options]', summary },
  );
  const electron = electronBinary();
  if (electron.path) {
    const appRoot = fileURLToPath(new URL('../..', import.meta.url));
    const child = spawn(electron.path, [appRoot], {
      stdio: 'inherit',
      env: { ...process.env, LOCALMIM_NODE: process.execPath, ...(values.home && { LOCALMIM_HOME: values.home }) },
    });
    await new Promise((resolve) => child.on('exit', resolve));
    return;
  }
  console.error(`Electron is not available here (${electron.why}); serving the same UI to your browser instead.`);
  await serve({ port: Number(values.port), host: '127.0.0.1', home: homeDir(values.home) });
}
