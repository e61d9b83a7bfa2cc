/**
 * Host-wide advisory locks (flock(2) through koffi): held by an open file
 * descriptor, released by close or by the kernel when the process dies, so a
 * converter killed with -9 never leaves a stale lock behind. Waiting polls
 * with LOCK_NB so the event loop stays free.
 */
import { closeSync, mkdirSync, openSync } from 'node:fs';
import path from 'node:path';
import koffi from 'koffi';
import { UnavailableError } from '../core/errors.js';
import { sleep } from './util.js';

const LOCK_EX = 2;
const LOCK_NB = 4;
const EWOULDBLOCK = 11;

let flockFn: ((fd: number, op: number) => number) | undefined;
let errnoFn: (() => number) | undefined;

function flock(fd: number, op: number): { ok: boolean; errno: number } {
  if (!flockFn) {
    const l = koffi.load('libc.so.6');
    flockFn = l.func('int flock(int fd, int operation)') as (fd: number, op: number) => number;
    const loc = l.func('int *__errno_location(void)') as () => unknown;
    errnoFn = () => koffi.decode(loc(), 'int') as number;
  }
  const rc = flockFn(fd, op);
  return rc === 0 ? { ok: true, errno: 0 } : { ok: false, errno: errnoFn!() };
}

export interface HeldLock {
  readonly file: string;
  release(): void;
}

/**
 * Take an exclusive lock on `file` (created if missing). Waits up to
 * `timeoutMs` (default: forever), calling `onWait` once if it has to wait.
 */
export async function acquireLock(file: string, opts: { timeoutMs?: number; signal?: AbortSignal; onWait?: () => void } = {}): Promise<HeldLock> {
  mkdirSync(path.dirname(file), { recursive: true });
  const fd = openSync(file, 'a', 0o644);
  const start = Date.now();
  let waited = false;
  try {
    for (;;) {
      const r = flock(fd, LOCK_EX | LOCK_NB);
      if (r.ok) break;
      if (r.errno !== EWOULDBLOCK) throw new UnavailableError(`lock ${file}: flock failed (errno ${r.errno})`, 'CVMFS_THIN_LOCK');
      if (!waited) {
        waited = true;
        opts.onWait?.();
      }
      if (opts.timeoutMs !== undefined && Date.now() - start > opts.timeoutMs) {
        throw new UnavailableError(`lock ${file}: still held by another process after ${opts.timeoutMs} ms`, 'CVMFS_THIN_LOCK_TIMEOUT');
      }
      await sleep(100, opts.signal);
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
