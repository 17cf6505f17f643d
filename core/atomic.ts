import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, statfsSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';

/** A write that the disk had no room for (ENOSPC, a quota, a short write, or too little free space to start). */
export class NoRoomError extends Error {
  override name = 'NoRoomError';
}

const NO_ROOM = new Set(['ENOSPC', 'EDQUOT', 'EFBIG']);

/** `writeSync`'s shape: the seam through which a test stands in for a full disk's short writes. */
export type WriteFn = (fd: number, data: Uint8Array, offset: number, length: number) => number;

/**
 * Writes every byte of `data` to a new file `path` and fsyncs it. A full disk may accept part of a write without an
 * error (a short count), so this loops until all is written; a failure removes the file and throws, naming it.
 */
export function writeWhole(path: string, data: Uint8Array | string, write: WriteFn = writeSync): void {
  const bytes = typeof data === 'string' ? Buffer.from(data) : data;
  let fd: number | undefined;
  try {
    fd = openSync(path, 'w');
    for (let done = 0; done < bytes.length;) {
      const n = write(fd, bytes, done, bytes.length - done);
      if (n <= 0) throw Object.assign(new Error('the disk took no more bytes'), { code: 'ENOSPC' });
      done += n;
    }
    fsyncSync(fd);
  } catch (err) {
    rmSync(path, { force: true });
    const e = err as NodeJS.ErrnoException;
    if (e.code && NO_ROOM.has(e.code)) throw new NoRoomError(`${path}: no room left on its disk (${e.code}); nothing was saved`);
    throw new Error(`${path}: cannot write (${e.code ?? e.message})`);
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** Makes a rename or a new file in `dir` durable. */
export function fsyncFolder(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Writes `path` whole or not at all: a temp file beside it (`NAME.tmp-PID`, which startup removes once its writer is
 * dead), every byte written and fsynced, renamed into place, then the folder fsynced. A crash or a full disk leaves
 * the old file or the new one, never part of one.
 */
export function writeAtomic(path: string, data: Uint8Array | string, write?: WriteFn): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.tmp-${process.pid}`;
  writeWhole(tmp, data, write);
  renameSync(tmp, path);
  fsyncFolder(dirname(path));
}

/** Space kept free beyond a file, so that the database can still record it. */
const HEADROOM = 1 << 20;

/** Refuses, before writing anything, a file of `bytes` that its folder's disk has no room for. */
export function assertRoom(path: string, bytes: number): void {
  mkdirSync(dirname(path), { recursive: true });
  const { bavail, bsize } = statfsSync(dirname(path));
  const free = bavail * bsize;
  if (free < bytes + HEADROOM)
    throw new NoRoomError(`${path}: needs ${mb(bytes + HEADROOM)} and its disk has ${mb(free)} free; free some space, then resume`);
}

const mb = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MB`;
