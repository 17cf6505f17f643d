import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
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

/** Opens (creating if needed) the database with WAL, foreign keys and every pending migration applied. */
export function openDatabase(path: string, upTo = latestVersion()): DB {
  mkdirSync(dirname(path), { recursive: true });
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 5000');
  try {
    migrate(db, path, upTo);
  } catch (err) {
    db.close();
    throw err;
  }
  return db;
}

function migrate(db: DB, path: string, upTo: number): void {
  const current = db.pragma('user_version', { simple: true }) as number;
  if (current > latestVersion()) throw new DatabaseFromTheFutureError(path, current);
  const pending = MIGRATIONS.filter((m) => m.version > current && m.version <= upTo);
  // Each migration and its version bump commit together, so a crash leaves a consistent schema.
  for (const m of pending) {
    db.transaction(() => {
      db.exec(m.sql);
      db.pragma(`user_version = ${m.version}`);
    })();
  }
}
