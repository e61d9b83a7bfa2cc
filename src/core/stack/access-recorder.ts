/**
 * Access recorder: which files a container opens in its first seconds, as an
 * access profile that a later start of the same image uses to prefetch those
 * files from CVMFS (warming the client cache before the container asks).
 *
 * The opens come from the Host (watchOpens: fanotify on the overlay's
 * superblock, every copy of the mount counted; see host/open-watch.ts). The
 * mount point prefix is stripped from each opened file's path, and a name is
 * kept only if it leads to the same file through our mount (lstat ino/dev):
 * not so for a path in a live container namespace's own layout.
 *
 * Events carry no time: `atMs` is when the event was read (poll granularity).
 */
import { lstatSync } from 'node:fs';
import path from 'node:path';
import { FailedPreconditionError, InvalidArgumentError } from '../errors/errors.js';
import type { Host, OpenEvent, OpenWatch } from '../host/host.js';
import { OpenWatchError } from '../host/open-watch.js';

/** A regular file: absolute path as the container sees it, size, when its first open was read, executed at some point. */
interface AccessRecord {
  path: string;
  size: number;
  atMs: number;
  exec: boolean;
}

interface RecordOptions {
  windowMs: number; // stop this long after the start
  idleMs?: number; // stop after no new file for this long (counted from the start too)
  maxFiles: number; // stop when this many files are recorded
  pollMs?: number; // period of the reads (default 20 ms)
  signal?: AbortSignal;
}

type StopReason = 'window' | 'idle' | 'max-files' | 'aborted' | 'unmounted' | 'error';

interface AccessRecording {
  files: AccessRecord[]; // each once, in the order of their first open
  events: number; // open events read (repeated opens and non-regular files included)
  dropped: number; // events lost: queue overflows, event fds the kernel could not open
  reason: StopReason;
  error?: Error; // with reason 'error': the read failure that ended the recording (files so far kept)
}

/** fanotify is not available for this mount point: callers record nothing. */
export class NoAccessRecordingError extends FailedPreconditionError {
  readonly mountpoint: string;
  /** Errno name (EPERM, ENOSYS, EINVAL…), or undefined when the path is not a mount point. */
  readonly errno: string | undefined;
  constructor(mountpoint: string, why: string, errno?: string, cause?: unknown) {
    super(`cannot record file opens on ${mountpoint}: ${why}${errno ? `: ${errno}` : ''}`, 'CVMFS_THIN_NO_ACCESS_RECORDING', { cause });
    this.mountpoint = mountpoint;
    this.errno = errno;
  }
}

const SLICE_MS = 10; // longest run of reads before yielding to the event loop
const MOUNT_CHECK_MS = 500;

/** The path as the container sees it, or undefined for what is not a file of the image. */
export function containerPath(link: string, mountpoint: string): string | undefined {
  if (!link.startsWith('/') || link.endsWith(' (deleted)')) return undefined; // anon_inode:…, removed since
  let p = link;
  if (mountpoint !== '/' && (p === mountpoint || p.startsWith(mountpoint + '/'))) p = p.slice(mountpoint.length) || '/';
  p = path.posix.normalize(p);
  return /^\/(proc|sys|dev)(\/|$)/.test(p) ? undefined : p;
}

/**
 * Record the regular files opened on the mount at `mountpoint` until a stop
 * condition (`host` watches the opens). Throws NoAccessRecordingError when
 * they cannot be watched there.
 */
export async function recordAccesses(host: Host, mountpoint: string, o: RecordOptions): Promise<AccessRecording> {
  if (!(o.windowMs >= 0) || !(o.maxFiles >= 1) || (o.idleMs !== undefined && !(o.idleMs >= 0))) {
    throw new InvalidArgumentError(`access recording: bad options (windowMs ${o.windowMs}, idleMs ${o.idleMs}, maxFiles ${o.maxFiles})`);
  }
  const mp = path.resolve(mountpoint);
  if (o.signal?.aborted) return { files: [], events: 0, dropped: 0, reason: 'aborted' };
  let watch: OpenWatch;
  try {
    watch = host.watchOpens(mp);
  } catch (e) {
    if (e instanceof OpenWatchError) throw new NoAccessRecordingError(mp, e.why, e.code, e.cause ?? e);
    throw e;
  }
  const seen = new Map<string, AccessRecord>();
  const t0 = performance.now();
  let events = 0;
  let dropped = 0;
  let lastNew = t0;
  let lastMountCheck = t0;

  const note = (ev: OpenEvent, now: number): void => {
    if (ev.pid === process.pid || ev.link === undefined) return; // our own opens are not the container's
    const p = containerPath(ev.link, mp);
    if (p === undefined) return;
    const known = seen.get(p);
    if (known) {
      known.exec ||= ev.exec;
      return;
    }
    if (seen.size >= o.maxFiles) return;
    const st = ev.file;
    if (!st) return;
    // the name must lead to this file through our mount (not so for a path in a live namespace's own layout)
    const via = lstatSync(path.join(mp, p), { bigint: true, throwIfNoEntry: false });
    if (via?.ino !== st.ino || via.dev !== st.dev) return;
    seen.set(p, { path: p, size: st.size, atMs: Math.round(now - t0), exec: ev.exec });
    lastNew = now;
  };

  /** Read what is queued; true when the time slice ran out first. */
  const drain = (): boolean => {
    const until = performance.now() + SLICE_MS;
    for (;;) {
      const r = watch.read();
      if (!r) return false;
      dropped += r.lost;
      events += r.events.length;
      const now = performance.now();
      for (const ev of r.events) {
        try {
          note(ev, now);
        } catch {
          /* gone or unreadable: not recorded */
        }
      }
      if (seen.size >= o.maxFiles) return false;
      if (performance.now() >= until) return true;
    }
  };

  const stopReason = (): StopReason | undefined => {
    const now = performance.now();
    if (seen.size >= o.maxFiles) return 'max-files';
    if (now - t0 >= o.windowMs) return 'window';
    if (o.idleMs !== undefined && now - lastNew >= o.idleMs) return 'idle';
    if (now - lastMountCheck >= MOUNT_CHECK_MS) {
      lastMountCheck = now;
      if (!watch.mounted()) return 'unmounted';
    }
    return undefined;
  };

  return new Promise<AccessRecording>((resolve) => {
    let timer: NodeJS.Timeout | undefined;
    let done = false;
    const finish = (reason: StopReason, error?: unknown): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      o.signal?.removeEventListener('abort', onAbort);
      watch.close();
      const r: AccessRecording = { files: [...seen.values()], events, dropped, reason };
      if (error !== undefined) r.error = error instanceof Error ? error : new Error(String(error));
      resolve(r);
    };
    const onAbort = (): void => finish('aborted');
    const tick = (): void => {
      try {
        const more = drain();
        const stop = stopReason();
        if (stop) finish(stop);
        else timer = setTimeout(tick, more ? 0 : (o.pollMs ?? 20));
      } catch (e) {
        finish('error', e);
      }
    };
    o.signal?.addEventListener('abort', onAbort, { once: true });
    timer = setTimeout(tick, 0);
  });
}
