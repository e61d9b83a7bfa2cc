/**
 * The real host's watch of the files opened on a mounted file system
 * (Host.watchOpens), through fanotify.
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
 *    gone.
 *  - Unmounting removes the mark silently (reads just stay empty): the mount
 *    table is watched instead.
 */
import { closeSync, constants, fstatSync, openSync, readFileSync, readlinkSync, readSync } from 'node:fs';
import os from 'node:os';
import type { OpenEvent, OpenWatch } from './host.js';
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
} from './sys.js';

/** Why opens cannot be watched at a mount point: what failed (`why`), and the errno name when a call failed. */
export class OpenWatchError extends Error {
  constructor(
    readonly why: string,
    readonly code: string | undefined,
    options?: { cause?: unknown },
  ) {
    super(`${why}${code ? `: ${code}` : ''}`, options);
    this.name = 'OpenWatchError';
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

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    /* already closed */
  }
}

/** Read errors that end the watch (anything else is the kernel failing to open one event's fd: that event is lost). */
const FATAL_READ = new Set(['EBADF', 'EINVAL', 'EFAULT']);

/** An event's file as this process sees it; its fd is closed by the caller. */
function describe(ev: FanotifyEvent): OpenEvent {
  const out: OpenEvent = { pid: ev.pid, exec: (ev.mask & FAN_OPEN_EXEC) !== 0, link: undefined, file: undefined };
  if (ev.fd < 0) return out;
  try {
    out.link = readlinkSync(`/proc/self/fd/${ev.fd}`);
    const st = fstatSync(ev.fd, { bigint: true });
    if (st.isFile()) out.file = { ino: st.ino, dev: st.dev, size: Number(st.size) };
  } catch {
    /* gone or unreadable */
  }
  return out;
}

/** A fanotify group watching opens on the superblock mounted at `mp` (absolute; checked to be that mount's, not the parent's). */
export function watchOpens(mp: string): OpenWatch {
  let dir: number;
  try {
    dir = openSync(mp, constants.O_RDONLY | constants.O_DIRECTORY);
  } catch (e) {
    throw new OpenWatchError('cannot open it', (e as NodeJS.ErrnoException).code, { cause: e });
  }
  let fan = -1;
  let dev: string;
  try {
    dev = devString(fstatSync(dir, { bigint: true }).dev);
    if (mountDevice(mp) !== dev) throw new OpenWatchError('not a mount point', undefined);
    fan = fanotifyInit(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK, constants.O_RDONLY | O_CLOEXEC);
    fanotifyMark(fan, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_OPEN | FAN_OPEN_EXEC, dir, null);
  } catch (e) {
    if (fan >= 0) closeSync(fan);
    if (e instanceof SyscallError) throw new OpenWatchError(e.syscall, e.code, { cause: e });
    throw e;
  } finally {
    closeSync(dir);
  }
  const buf = Buffer.alloc(READ_BUFFER);
  return {
    read() {
      let n: number;
      try {
        n = readSync(fan, buf, 0, buf.length, null);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code ?? '';
        if (code === 'EAGAIN') return null;
        if (FATAL_READ.has(code)) throw e;
        return { events: [], lost: code === 'EINTR' ? 0 : 1 };
      }
      if (n <= 0) return null;
      const { events: evs, leftover } = parseFanotifyEvents(buf, n);
      let lost = leftover > 0 ? 1 : 0;
      const events: OpenEvent[] = [];
      for (const ev of evs) {
        if ((ev.mask & FAN_Q_OVERFLOW) !== 0) lost++;
        else events.push(describe(ev));
        if (ev.fd >= 0) closeQuietly(ev.fd);
      }
      return { events, lost };
    },
    mounted: () => mountDevice(mp) === dev,
    close: () => closeQuietly(fan),
  };
}
