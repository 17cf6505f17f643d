import { homedir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const APP_NAME = 'LocalMIM Studio';

/** The bundled default dataset. */
export const SAMPLE_IMAGES = fileURLToPath(new URL('../assets/sample-images', import.meta.url));

/**
 * The one folder holding the database, the decode cache, checkpoints and exports: `--home`, else
 * LOCALMIM_HOME, else the platform's per-user data folder (the same one Electron's `userData` names).
 */
export function homeDir(flag?: string): string {
  if (flag) return flag;
  if (process.env.LOCALMIM_HOME) return process.env.LOCALMIM_HOME;
  if (process.platform === 'darwin') return join(homedir(), 'Library', 'Application Support', APP_NAME);
  if (process.platform === 'win32') return join(process.env.APPDATA ?? join(homedir(), 'AppData', 'Roaming'), APP_NAME);
  return join(process.env.XDG_CONFIG_HOME ?? join(homedir(), '.config'), APP_NAME);
}

export const homePaths = (home: string) => ({
  db: join(home, 'localmim.db'),
  cache: join(home, 'cache'),
  run: (id: number) => join(home, 'runs', String(id)),
  checkpoint: (id: number, step: number) => join(home, 'runs', String(id), `ckpt-${String(step).padStart(7, '0')}.safetensors`),
});

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
