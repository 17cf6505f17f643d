import Database from 'better-sqlite3';
import { existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { MIGRATIONS } from './migrations.js';

export type DB = Database.Database;

export class DatabaseFromTheFutureError extends Error {
  constructor(path: string, version: number) {
    super(
      `${path}: database schema version ${version} is newer than this LocalMIM Studio understands (${latestVersion()}); update the app`,
    );
    this.name = 'DatabaseFromTheFutureError';
  }
}

export const latestVersion = () => MIGRATIONS[MIGRATIONS.length - 1]!.version;

/**
 * Opens (creating if needed) the database with WAL, foreign keys and every pending migration applied.
 * Whatever stops it (a folder that cannot be made, a damaged file) is an error naming the path. A write waits
 * `busyTimeoutMs` at most for another connection's lock, blocking its thread meanwhile, then fails SQLITE_BUSY.
 */
export function openDatabase(path: string, upTo = latestVersion(), busyTimeoutMs = 5000): DB {
  makeFolder(dirname(path));
  refuseTruncated(path);
  let db: DB | undefined;
  try {
    db = new Database(path);
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    db.pragma('foreign_keys = ON');
    db.pragma(`busy_timeout = ${busyTimeoutMs}`);
    migrate(db, path, upTo);
    return db;
  } catch (err) {
    db?.close();
    throw err instanceof Database.SqliteError ? sqliteProblem(path, err) : err;
  }
}

function makeFolder(dir: string): void {
  try {
    mkdirSync(dir, { recursive: true });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'ENOTDIR' || e.code === 'EEXIST' ? 'a file stands where a folder of its path should be' : e.message;
    throw new Error(`${dir}: cannot create the data folder (${why})`);
  }
}

/**
 * SQLite takes an empty file for a new database; beside run folders it is one that lost its content,
 * and starting afresh would orphan their checkpoints.
 */
function refuseTruncated(path: string): void {
  if (!existsSync(path) || statSync(path).size > 0) return;
  const runs = join(dirname(path), 'runs');
  const orphans = existsSync(runs) ? readdirSync(runs).filter((n) => /^\d+$/.test(n)) : [];
  if (orphans.length)
    throw new Error(
      `${path}: the database file is empty but ${runs} holds ${orphans.length} run folder${orphans.length === 1 ? '' : 's'}: restore it from a backup, or move it and the runs folder aside to start afresh`,
    );
}

function sqliteProblem(path: string, err: InstanceType<typeof Database.SqliteError>): Error {
  const damaged = err.code === 'SQLITE_NOTADB' || err.code.startsWith('SQLITE_CORRUPT');
  const advice = damaged ? ': restore it from a backup, or move it aside to start afresh' : '';
  return new Error(`${path}: cannot open the database (${err.message})${advice}`);
}

function migrate(db: DB, path: string, upTo: number): void {
  const current = db.pragma('user_version', { simple: true }) as number;
  if (current > latestVersion()) throw new DatabaseFromTheFutureError(path, current);
  const pending = MIGRATIONS.filter((m) => m.version > current && m.version <= upTo);
  if (!pending.length) return;
  // Rebuilding a table (to change a CHECK) drops it: without this, the drop would cascade to its children.
  db.pragma('foreign_keys = OFF');
  try {
    // Each migration and its version bump commit together, so a crash leaves a consistent schema.
    for (const m of pending) {
      db.transaction(() => {
        db.exec(m.sql);
        const broken = db.pragma('foreign_key_check') as unknown[];
        if (broken.length) throw new Error(`${path}: migration ${m.version} left ${broken.length} broken references`);
        db.pragma(`user_version = ${m.version}`);
      })();
    }
  } finally {
    db.pragma('foreign_keys = ON');
  }
}
