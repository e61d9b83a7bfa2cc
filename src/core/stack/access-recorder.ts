/**
 * Access recorder: which files a container opens in its first seconds, as an
 * access profile that a later start of the same image uses to prefetch those
 * files from CVMFS (warming the client cache before the container asks).
 *
 * Kernel facts it relies on (fanotify, Linux ≥ 5.0, CAP_SYS_ADMIN):
 *  - fanotify_mark(FAN_MARK_ADD|FAN_MARK_FILESYSTEM, FAN_OPEN|FAN_OPEN_EXEC)
 *    on the overlay mount point marks the overlay's superblock: opens through
 *    every copy of the mount count — the rbind copy in the container's mount
 *    namespace that runc pivots (or chroots) into, and the host's own (runc
 *    before pivot_root). Directory opens are not reported (no FAN_ONDIR).
 *  - A read returns whole `struct fanotify_event_metadata { u32 event_len;
 *    u8 vers (3); u8 reserved; u16 metadata_len; u64 mask; s32 fd; s32 pid }`
 *    (24 bytes, host byte order). The kernel opens each event's fd at read
 *    time (queued events hold none), and every fd read must be closed; when
 *    it cannot open one (EMFILE…) the read fails and the event is lost.
 *    FAN_Q_OVERFLOW (fd -1): the queue (16384 events) overflowed.
 *  - readlink /proc/self/fd/<fd> is the path as seen from *our* root at read
 *    time: under our mount point for opens through our mount, the path in the
 *    other namespace while it lives (runc after pivot_root: relative to the
 *    container's root), relative to the overlay root once that namespace is
 *    gone. The mount point prefix is stripped, and a name is kept only if it
 *    leads to the same file through our mount (lstat ino/dev).
 *  - Unmounting removes the mark silently (reads just stay empty): the mount
 *    table is watched instead.
 * Events carry no time: `atMs` is when the event was read (poll granularity).
 */
import { closeSync, constants, fstatSync, lstatSync, openSync, readFileSync, readlinkSync, readSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FailedPreconditionError, InvalidArgumentError } from '../errors/errors.js';
import {
  FAN_CLASS_NOTIF,
  FAN_CLOEXEC,
  FAN_MARK_ADD,
  FAN_MARK_FILESYSTEM,
  FAN_NONBLOCK,
  FAN_OPEN,
  FAN_OPEN_EXEC,
  FAN_Q_OVERFLOW,
  fanotifyInit,
  fanotifyMark,
  SyscallError,
} from '../host/sys.js';

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

interface FanotifyEvent {
  mask: number;
  fd: number;
  pid: number;
}

const METADATA_LEN = 24;
const METADATA_VERSION = 3;
const O_CLOEXEC = 0o2000000; // same on x86_64 and aarch64; 64-bit kernels add O_LARGEFILE themselves
const READ_BUFFER = METADATA_LEN * 256; // 256 events a read: at most 256 event fds open at once
const SLICE_MS = 10; // longest run of reads before yielding to the event loop
const MOUNT_CHECK_MS = 500;
const LITTLE_ENDIAN = os.endianness() === 'LE';

/**
 * The events of one read (`len` bytes of `buf`). An event whose declared
 * length runs past `len` is still returned (its fd is open); `leftover`
 * counts bytes that are not whole metadata (a truncated tail) or follow a
 * malformed record (event_len < 24, unknown version). Pure.
 */
export function parseFanotifyEvents(buf: Buffer, len = buf.length, littleEndian = LITTLE_ENDIAN): { events: FanotifyEvent[]; leftover: number } {
  const u32 = (o: number) => (littleEndian ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
  const s32 = (o: number) => (littleEndian ? buf.readInt32LE(o) : buf.readInt32BE(o));
  const events: FanotifyEvent[] = [];
  let off = 0;
  len = Math.min(len, buf.length);
  while (len - off >= METADATA_LEN) {
    const eventLen = u32(off);
    if (eventLen < METADATA_LEN || buf[off + 4] !== METADATA_VERSION) break;
    const [lo, hi] = littleEndian ? [u32(off + 8), u32(off + 12)] : [u32(off + 12), u32(off + 8)];
    events.push({ mask: hi * 2 ** 32 + lo, fd: s32(off + 16), pid: s32(off + 20) });
    off = Math.min(off + eventLen, len);
  }
  return { events, leftover: len - off };
}

/** The path as the container sees it, or undefined for what is not a file of the image. */
export function containerPath(link: string, mountpoint: string): string | undefined {
  if (!link.startsWith('/') || link.endsWith(' (deleted)')) return undefined; // anon_inode:…, removed since
  let p = link;
  if (mountpoint !== '/' && (p === mountpoint || p.startsWith(mountpoint + '/'))) p = p.slice(mountpoint.length) || '/';
  p = path.posix.normalize(p);
  return /^\/(proc|sys|dev)(\/|$)/.test(p) ? undefined : p;
}

/** `major:minor` of the topmost mount at `mp` in /proc/self/mountinfo, or undefined. */
function mountDevice(mp: string): string | undefined {
  let dev: string | undefined;
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f.length > 4 && f[4]!.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))) === mp) dev = f[2];
  }
  return dev;
}

/** glibc major()/minor() of a dev_t. */
function devString(d: bigint): string {
  const major = ((d >> 32n) & 0xfffff000n) | ((d >> 8n) & 0xfffn);
  const minor = ((d >> 12n) & 0xffffff00n) | (d & 0xffn);
  return `${major}:${minor}`;
}

/** A fanotify group watching opens on the superblock mounted at `mp` (checked to be that mount's, not the parent's). */
function openGroup(mp: string): { fan: number; dev: string } {
  let dir: number;
  try {
    dir = openSync(mp, constants.O_RDONLY | constants.O_DIRECTORY);
  } catch (e) {
    throw new NoAccessRecordingError(mp, 'cannot open it', (e as NodeJS.ErrnoException).code, e);
  }
  let fan = -1;
  try {
    const dev = devString(fstatSync(dir, { bigint: true }).dev);
    if (mountDevice(mp) !== dev) throw new NoAccessRecordingError(mp, 'not a mount point');
    fan = fanotifyInit(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK, constants.O_RDONLY | O_CLOEXEC);
    fanotifyMark(fan, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_OPEN | FAN_OPEN_EXEC, dir, null);
    return { fan, dev };
  } catch (e) {
    if (fan >= 0) closeSync(fan);
    if (e instanceof SyscallError) throw new NoAccessRecordingError(mp, e.syscall, e.code, e);
    throw e;
  } finally {
    closeSync(dir);
  }
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    /* already closed */
  }
}

/** Read errors that end the recording (anything else is the kernel failing to open one event's fd: that event is lost). */
const FATAL_READ = new Set(['EBADF', 'EINVAL', 'EFAULT']);

/**
 * Record the regular files opened on the mount at `mountpoint` until a stop
 * condition. Throws NoAccessRecordingError when fanotify cannot watch it.
 */
export async function recordAccesses(mountpoint: string, o: RecordOptions): Promise<AccessRecording> {
  if (!(o.windowMs >= 0) || !(o.maxFiles >= 1) || (o.idleMs !== undefined && !(o.idleMs >= 0))) {
    throw new InvalidArgumentError(`access recording: bad options (windowMs ${o.windowMs}, idleMs ${o.idleMs}, maxFiles ${o.maxFiles})`);
  }
  const mp = path.resolve(mountpoint);
  if (o.signal?.aborted) return { files: [], events: 0, dropped: 0, reason: 'aborted' };
  const { fan, dev } = openGroup(mp);
  const buf = Buffer.alloc(READ_BUFFER);
  const seen = new Map<string, AccessRecord>();
  const t0 = performance.now();
  let events = 0;
  let dropped = 0;
  let lastNew = t0;
  let lastMountCheck = t0;

  const note = (ev: FanotifyEvent, now: number): void => {
    if (ev.pid === process.pid) return; // our own opens are not the container's
    const p = containerPath(readlinkSync(`/proc/self/fd/${ev.fd}`), mp);
    if (p === undefined) return;
    const exec = (ev.mask & FAN_OPEN_EXEC) !== 0;
    const known = seen.get(p);
    if (known) {
      known.exec ||= exec;
      return;
    }
    if (seen.size >= o.maxFiles) return;
    const st = fstatSync(ev.fd, { bigint: true });
    if (!st.isFile()) return;
    // the name must lead to this file through our mount (not so for a path in a live namespace's own layout)
    const via = lstatSync(path.join(mp, p), { bigint: true, throwIfNoEntry: false });
    if (via?.ino !== st.ino || via.dev !== st.dev) return;
    seen.set(p, { path: p, size: Number(st.size), atMs: Math.round(now - t0), exec });
    lastNew = now;
  };

  /** Read what is queued; true when the time slice ran out first. */
  const drain = (): boolean => {
    const until = performance.now() + SLICE_MS;
    for (;;) {
      let n: number;
      try {
        n = readSync(fan, buf, 0, buf.length, null);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code ?? '';
        if (code === 'EAGAIN') return false;
        if (FATAL_READ.has(code)) throw e;
        if (code !== 'EINTR') dropped++;
        continue;
      }
      if (n <= 0) return false;
      const { events: evs, leftover } = parseFanotifyEvents(buf, n);
      if (leftover > 0) dropped++;
      const now = performance.now();
      for (const ev of evs) {
        const overflow = (ev.mask & FAN_Q_OVERFLOW) !== 0;
        if (overflow) dropped++;
        else events++;
        if (ev.fd < 0) continue;
        try {
          if (!overflow) note(ev, now);
        } catch {
          /* gone or unreadable: not recorded */
        } finally {
          closeQuietly(ev.fd);
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
      if (mountDevice(mp) !== dev) return 'unmounted';
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
      closeQuietly(fan);
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
