import { execSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const BIN = fileURLToPath(new URL('../bin/localmim.js', import.meta.url));

/** Runs the real CLI in a child process. */
export function localmim(args: string[], env: NodeJS.ProcessEnv = {}) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, maxBuffer: 256 << 20 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** `localmim serve` needs the built UI: build it once where a test runs before `npm run build` has. */
export function ensureBuilt(): void {
  const root = fileURLToPath(new URL('..', import.meta.url));
  if (!existsSync(join(root, 'renderer/dist/index.html'))) execSync('npm run build', { cwd: root, stdio: 'inherit' });
}
