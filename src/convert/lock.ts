/**
 * Host-wide advisory locks (flock(2) through the host seam): held by an open
 * file descriptor, released by close or by the kernel when the process dies,
 * so a converter killed with -9 never leaves a stale lock behind. Waiting
 * polls with LOCK_NB so the event loop stays free.
 */
import { closeSync, mkdirSync, openSync } from 'node:fs';
import path from 'node:path';
import { UnavailableError } from '../core/errors/errors.js';
import { type Host, systemHost } from '../core/host/host.js';
import { LOCK_EX, LOCK_NB } from '../core/host/sys.js';
import { sleep } from './util.js';

export interface HeldLock {
  readonly file: string;
  release(): void;
}

export interface LockOptions {
  /** Give up after this long (default: wait forever). */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Called once if the lock is busy and we have to wait. */
  onWait?: () => void;
  /** Poll interval while waiting (default 100 ms). */
  pollMs?: number;
  /** Where flock(2) goes (default: the real host). */
  host?: Host;
}

/**
 * Take an exclusive lock on `file` (created if missing). Waits up to
 * `timeoutMs` (default: forever), calling `onWait` once if it has to wait.
 */
export async function acquireLock(file: string, opts: LockOptions = {}): Promise<HeldLock> {
  const host = opts.host ?? systemHost;
  mkdirSync(path.dirname(file), { recursive: true });
  const fd = openSync(file, 'a', 0o644);
  const start = Date.now();
  let waited = false;
  try {
    for (;;) {
      let got: boolean;
      try {
        got = host.flock(fd, LOCK_EX | LOCK_NB);
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
    closeSync(fd);
    throw e;
  }
  let held = true;
  return {
    file,
    release() {
      if (!held) return;
      held = false;
      closeSync(fd);
    },
  };
}
