/**
 * One daemon per state directory: an exclusive flock(2) on `<dir>/lock`,
 * taken before anything in the directory is opened and held for the life of
 * the daemon (the kernel drops it when the process dies, so a crash never
 * leaves a stale lock). A second daemon on the same directory — another
 * socket, another config — is refused, naming the holder the lock file
 * describes. Taking the lock creates only the lock file.
 */
import { closeSync, constants, ftruncateSync, mkdirSync, openSync, readFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { FailedPreconditionError } from '../errors/errors.js';
import type { Host } from '../host/host.js';
import { LOCK_EX, LOCK_NB } from '../host/sys.js';

/** Who holds a lock (written into the lock file by the holder). */
export interface LockHolder {
  pid: number;
  /** e.g. `cvmfs-thin snapshotter`. */
  daemon: string;
  /** Its socket, when it has one. */
  address?: string | undefined;
  since: string;
}

export interface RootLock {
  readonly file: string;
  release(): void;
}

function describe(file: string): string {
  try {
    const h = JSON.parse(readFileSync(file, 'utf8')) as Partial<LockHolder>;
    if (typeof h.pid === 'number') return `${h.daemon ?? 'a daemon'} (pid ${h.pid}${h.address ? `, ${h.address}` : ''}, since ${h.since ?? '?'})`;
  } catch {
    /* being written, or not ours */
  }
  return 'another process';
}

/** Lock `dir` (created with `mode` if missing) for `holder.daemon`; throws FailedPrecondition naming the holder when it is taken. */
export function lockRoot(dir: string, host: Host, holder: Omit<LockHolder, 'pid' | 'since'>, mode = 0o700): RootLock {
  mkdirSync(dir, { recursive: true, mode });
  const file = path.join(dir, 'lock');
  const fd = openSync(file, constants.O_RDWR | constants.O_CREAT, 0o600); // (libuv opens with O_CLOEXEC)
  try {
    if (!host.flock(fd, LOCK_EX | LOCK_NB)) {
      throw new FailedPreconditionError(
        `${dir} is in use by ${describe(file)}: one ${holder.daemon} per state directory (stop it, or give this one another directory)`,
        'CVMFS_THIN_ROOT_LOCKED',
      );
    }
    const me: LockHolder = { pid: process.pid, ...holder, since: new Date().toISOString() };
    ftruncateSync(fd, 0);
    writeSync(fd, `${JSON.stringify(me)}\n`, 0);
  } catch (e) {
    closeSync(fd);
    throw e;
  }
  // closing the descriptor releases the lock
  let open = true;
  const release = () => {
    if (open) closeSync(fd);
    open = false;
  };
  return { file, release };
}
