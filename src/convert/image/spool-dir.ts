/**
 * The private temporary directories the archive transports read and write
 * image archives in (`<tmp>/cvmfs-thin-archive-XXXXXX`, archive.ts), and the
 * sweep of those whose conversion died (kill -9, a crash, a power cut).
 *
 * Ownership is checkable: a spool holds `#owner`, a file its process keeps
 * open under an exclusive flock(2) (through the Host) for as long as the spool lives, and which
 * records the pid and the process start time (for people, and for the rare
 * file system without flock). The kernel drops the lock when the process
 * dies, however it dies: a sweep that gets the lock knows the owner is gone
 * and removes the spool; a lock it cannot get is a conversion still running,
 * in this process or another, and its spool is left alone. The lock file is
 * locked before it gets its name, so no sweep ever sees it unlocked while its
 * owner lives.
 *
 * A sweep only looks at entries with the prefix that are directories owned by
 * this user (symbolic links are never followed), with a `#owner` that is a
 * regular file owned by this user; anything else with the prefix is not ours
 * and is left alone. Spools without `#owner` (written by a cvmfs-thin from
 * before, or killed between creating the directory and its lock) are removed
 * once they are a day old. A temp root that others may write into and that
 * is not sticky is not swept at all (an entry checked could be swapped before
 * its removal).
 */
import { closeSync, constants as C, fstatSync, lstatSync, openSync, promises as fsp, readFileSync, readSync, renameSync, writeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import { removeTree } from '../../core/fs/fsutil.js';
import type { Host } from '../../core/host/host.js';
import { LOCK_EX, LOCK_NB } from '../../core/host/sys.js';

export const SPOOL_PREFIX = 'cvmfs-thin-archive-';
/** `#` is not allowed in archive entry names (archive-spool.ts SAFE_NAME): no spooled file can land on it. */
export const OWNER_FILE = '#owner';
/** How old a spool without `#owner` must be before a sweep removes it. */
const LOCKLESS_GRACE_MS = 24 * 3600_000;

export interface SpoolDir {
  readonly dir: string;
  /** Remove the spool and drop its lock (idempotent). */
  remove(): Promise<void>;
}

/** Field 22 of /proc/<pid>/stat: when the process started (clock ticks since boot); null if there is no such process. */
export function processStart(pid: number | 'self'): string | null {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return s.slice(s.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

const swept = new Set<string>();

/**
 * A fresh spool directory (mode 0700) in `tmpRoot` (default: the system temp
 * dir), locked as this process's (`host` takes the lock). The first spool of
 * a process in a root sweeps that root first.
 */
export async function makeSpoolDir(host: Host, tmpRoot?: string, log?: Logger): Promise<SpoolDir> {
  const root = path.resolve(tmpRoot ?? os.tmpdir());
  await fsp.mkdir(root, { recursive: true });
  if (!swept.has(root)) await sweepStaleSpools(root, { host, log });
  const dir = await fsp.mkdtemp(path.join(root, SPOOL_PREFIX));
  let fd: number | null = null;
  try {
    const tmp = path.join(dir, `${OWNER_FILE}-${process.pid}`);
    fd = openSync(tmp, C.O_RDWR | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600);
    try {
      host.flock(fd, LOCK_EX | LOCK_NB); // a new file: nobody else can hold it
    } catch {
      /* a file system without flock: sweeps go by the recorded pid and start time */
    }
    writeSync(fd, `${JSON.stringify({ pid: process.pid, start: processStart('self') })}\n`);
    renameSync(tmp, path.join(dir, OWNER_FILE));
  } catch (e) {
    if (fd !== null) closeSync(fd);
    await removeTree(dir);
    throw e;
  }
  const lockFd = fd;
  let removed: Promise<void> | null = null;
  return {
    dir,
    remove() {
      removed ??= removeTree(dir).finally(() => closeSync(lockFd));
      return removed;
    },
  };
}

interface SweepResult {
  removed: string[];
  /** Entries with the prefix left alone, and why. */
  kept: { path: string; why: string }[];
}

/**
 * Is the spool at `dir` (already checked: a directory of ours) abandoned? A
 * reason to keep it, or the lock taken (held until the removal is done, so
 * that two sweeps do not both remove it).
 */
function claim(host: Host, dir: string, uid: number, dirIno: number, now: number, graceMs: number): string | { release(): void } {
  let dfd: number;
  try {
    dfd = openSync(dir, C.O_RDONLY | C.O_DIRECTORY | C.O_NOFOLLOW);
  } catch (e) {
    return `cannot open it: ${(e as NodeJS.ErrnoException).code}`;
  }
  try {
    const dst = fstatSync(dfd);
    if (dst.ino !== dirIno || dst.uid !== uid) return 'it changed while being checked';
    let lfd: number;
    try {
      // relative to the directory just checked, never following a link
      lfd = openSync(`/proc/self/fd/${dfd}/${OWNER_FILE}`, C.O_RDONLY | C.O_NOFOLLOW | C.O_NONBLOCK);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT') return `${OWNER_FILE} cannot be opened (${code})`;
      const age = now - dst.mtimeMs;
      return age >= graceMs ? { release() {} } : `no ${OWNER_FILE}, and younger than ${graceMs / 3600_000} h (being created, or from an older cvmfs-thin)`;
    }
    let free = false;
    try {
      const lst = fstatSync(lfd);
      if (!lst.isFile() || lst.uid !== uid) return `${OWNER_FILE} is not a regular file of this user`;
      try {
        free = host.flock(lfd, LOCK_EX | LOCK_NB);
      } catch {
        // no flock here: fall back to the recorded pid and start time
        const buf = Buffer.alloc(256);
        const rec = JSON.parse(buf.subarray(0, readSync(lfd, buf, 0, 256, 0)).toString()) as { pid?: unknown; start?: unknown };
        free = typeof rec.pid !== 'number' || processStart(rec.pid) !== rec.start;
      }
      // held: the owner runs; taken: the owner is gone
      return free ? { release: () => closeSync(lfd) } : 'its conversion is still running (its lock is held)';
    } catch (e) {
      return `its owner cannot be checked: ${(e as Error).message}`;
    } finally {
      if (!free) closeSync(lfd);
    }
  } finally {
    closeSync(dfd);
  }
}

/**
 * Remove the spools in `root` whose conversion is gone (see the header for
 * what counts as ours). Never throws for an entry: what cannot be checked
 * is kept. `host` tries the owners' locks.
 */
export async function sweepStaleSpools(
  root: string,
  o: { host: Host; log?: Logger | undefined; now?: number; locklessGraceMs?: number },
): Promise<SweepResult> {
  const res: SweepResult = { removed: [], kept: [] };
  const abs = path.resolve(root);
  swept.add(abs);
  const uid = process.getuid?.() ?? -1;
  let names: string[];
  try {
    const st = await fsp.stat(abs);
    if ((st.mode & 0o002) !== 0 && (st.mode & 0o1000) === 0) {
      o.log?.warn({ root: abs }, 'not sweeping abandoned archive spools: the temp dir is writable by everyone and not sticky');
      return res;
    }
    names = await fsp.readdir(abs);
  } catch {
    return res;
  }
  for (const n of names.filter((x) => x.startsWith(SPOOL_PREFIX)).sort()) {
    const p = path.join(abs, n);
    let c: string | { release(): void };
    try {
      const st = lstatSync(p);
      if (!st.isDirectory()) c = st.isSymbolicLink() ? 'a symbolic link' : 'not a directory';
      else if (st.uid !== uid) c = `owned by uid ${st.uid}, not by this user`;
      else c = claim(o.host, p, uid, st.ino, o.now ?? Date.now(), o.locklessGraceMs ?? LOCKLESS_GRACE_MS);
    } catch (e) {
      c = `cannot be checked: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`;
    }
    if (typeof c === 'string') {
      res.kept.push({ path: p, why: c });
      o.log?.debug({ path: p, why: c }, 'archive spool kept');
      continue;
    }
    try {
      await removeTree(p);
      res.removed.push(p);
      o.log?.info({ path: p }, 'removed the archive spool of a conversion that no longer runs');
    } catch (e) {
      res.kept.push({ path: p, why: `removal failed: ${(e as Error).message}` });
      o.log?.warn({ path: p, err: (e as Error).message }, 'could not remove an abandoned archive spool');
    } finally {
      c.release();
    }
  }
  return res;
}
