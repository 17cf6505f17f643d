import { existsSync, readdirSync, rmSync, statSync } from 'node:fs';
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
  runs: join(home, 'runs'),
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

/** A file being written atomically: `NAME.tmp-PID` (checkpoints) or `NAME.tmp-PID-N` (decode cache), renamed when whole. */
const TEMP = /\.tmp-(\d+)(?:-\d+)?$/;

/** Deletes the temp files in `dir` whose writer is dead (killed mid-write, they would stay forever); returns them. */
export function removeStaleTemps(dir: string): { path: string; pid: number; size: number }[] {
  if (!existsSync(dir)) return [];
  const stale = readdirSync(dir)
    .map((name) => ({ path: join(dir, name), pid: Number(TEMP.exec(name)?.[1]) }))
    .filter((t) => t.pid && t.pid !== process.pid && !isAlive(t.pid))
    .map((t) => ({ ...t, size: statSync(t.path, { throwIfNoEntry: false })?.size ?? 0 }));
  for (const t of stale) rmSync(t.path, { force: true });
  return stale;
}

/** The same for the whole data folder: every run's folder and the decode cache. */
export function removeStaleTempsIn(home: string): void {
  const { runs, cache } = homePaths(home);
  const folders = existsSync(runs) ? readdirSync(runs).map((n) => join(runs, n)) : [];
  for (const dir of [...folders, cache]) if (statSync(dir, { throwIfNoEntry: false })?.isDirectory()) removeStaleTemps(dir);
}
