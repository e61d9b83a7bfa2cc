/**
 * Host-wide advisory locks: an exclusive flock(2), through the host seam, on a
 * lock file. A lock is held by an open file descriptor and released by its
 * close or by the kernel when the process dies, so a process killed with -9
 * never leaves a stale lock behind. Two ways to take one:
 *
 * - `acquireLock` waits for it (the converters' publishing lock, a podman
 *   store, an OCI layout, the FlexVolume state directory), polling with
 *   LOCK_NB so the event loop stays free;
 * - `lockRoot` is one daemon per state directory: `<dir>/lock`, taken before
 *   anything in the directory is opened and held for the life of the daemon.
 *   A second daemon on the same directory — another socket, another config —
 *   is refused at once, naming the holder the lock file describes. Taking the
 *   lock creates only the lock file.
 */
import { closeSync, constants, ftruncateSync, mkdirSync, openSync, readFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { FailedPreconditionError, UnavailableError } from '../errors/errors.js';
import type { Host } from '../host/host.js';
import { LOCK_EX, LOCK_NB } from '../host/sys.js';
import { sleep } from '../util/concurrency.js';

export interface HeldLock {
  readonly file: string;
  /** Close the descriptor, which drops the lock (idempotent). */
  release(): void;
}

/** An open lock file: `take` tries LOCK_EX|LOCK_NB once through the host. */
interface LockFile extends HeldLock {
  readonly fd: number;
  take(): boolean;
}

function openLockFile(file: string, host: Host, flags: string | number, mode: number): LockFile {
  const fd = openSync(file, flags, mode); // (libuv opens with O_CLOEXEC)
  let open = true;
  return {
    file,
    fd,
    take: () => host.flock(fd, LOCK_EX | LOCK_NB),
    release() {
      if (!open) return;
      open = false;
      closeSync(fd);
    },
  };
}

interface LockOptions {
  /** Give up after this long (default: wait forever). */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Called once if the lock is busy and we have to wait. */
  onWait?: () => void;
  /** Poll interval while waiting (default 100 ms). */
  pollMs?: number;
  /** Where flock(2) goes. */
  host: Host;
}

/**
 * Take an exclusive lock on `file` (created if missing). Waits up to
 * `timeoutMs` (default: forever), calling `onWait` once if it has to wait.
 */
export async function acquireLock(file: string, opts: LockOptions): Promise<HeldLock> {
  const host = opts.host;
  mkdirSync(path.dirname(file), { recursive: true });
  const lock = openLockFile(file, host, 'a', 0o644);
  const start = Date.now();
  let waited = false;
  try {
    for (;;) {
      let got: boolean;
      try {
        got = lock.take();
      } catch (e) {
        throw new UnavailableError(`lock ${file}: flock failed: ${(e as Error).message}`, 'CVMFS_THIN_LOCK', { cause: e });
      }
      if (got) break;
      if (!waited) {
        waited = true;
        opts.onWait?.();
      }
      if (opts.timeoutMs !== undefined && Date.now() - start > opts.timeoutMs) {
        throw new UnavailableError(`lock ${file}: still held by another process after ${opts.timeoutMs} ms`, 'CVMFS_THIN_LOCK_TIMEOUT');
      }
      await sleep(opts.pollMs ?? 100, opts.signal);
    }
  } catch (e) {
    lock.release();
    throw e;
  }
  return { file, release: () => lock.release() };
}

/** Who holds a state directory (written into its lock file by the holder). */
interface LockHolder {
  pid: number;
  /** e.g. `cvmfs-thin snapshotter`. */
  daemon: string;
  /** Its socket, when it has one. */
  address?: string | undefined;
  since: string;
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
export function lockRoot(dir: string, host: Host, holder: Omit<LockHolder, 'pid' | 'since'>, mode = 0o700): HeldLock {
  mkdirSync(dir, { recursive: true, mode });
  const lock = openLockFile(path.join(dir, 'lock'), host, constants.O_RDWR | constants.O_CREAT, 0o600);
  try {
    if (!lock.take()) {
      throw new FailedPreconditionError(
        `${dir} is in use by ${describe(lock.file)}: one ${holder.daemon} per state directory (stop it, or give this one another directory)`,
        'CVMFS_THIN_ROOT_LOCKED',
      );
    }
    const me: LockHolder = { pid: process.pid, ...holder, since: new Date().toISOString() };
    ftruncateSync(lock.fd, 0);
    writeSync(lock.fd, `${JSON.stringify(me)}\n`, 0);
  } catch (e) {
    lock.release();
    throw e;
  }
  return { file: lock.file, release: () => lock.release() };
}
