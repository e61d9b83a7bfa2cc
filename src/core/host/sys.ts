/**
 * libc bindings for the system calls Node does not offer (mknod, extended
 * attributes, mount/umount, the new mount API, flock, fanotify), loaded lazily through
 * koffi so that pure modules and unprivileged tests never touch libc. The
 * daemons reach them through the Host seam (host.ts, `systemHost`); pure
 * modules and the tar workers (a Host cannot cross into a worker thread) call
 * them directly.
 */
import { closeSync } from 'node:fs';
import { createRequire } from 'node:module';
import type koffiType from 'koffi';

/** koffi is loaded on first use: the snapshotter only needs it to build whiteout masks. */
let koffiMod: typeof koffiType | undefined;
const koffi = (): typeof koffiType => (koffiMod ??= createRequire(import.meta.url)('koffi') as typeof koffiType);

/**
 * A path for the calls below: a string (encoded as UTF-8), or raw bytes for
 * names that are not valid UTF-8 (tar entry names are bytes).
 */
export type PathArg = string | Buffer;
type CPath = string | Buffer;

interface Libc {
  mknod: (path: CPath, mode: number, dev: bigint | number) => number;
  lsetxattr: (path: CPath, name: CPath, value: Buffer, size: number, flags: number) => number;
  lgetxattr: (path: CPath, name: CPath, value: Buffer | null, size: number) => number;
  llistxattr: (path: CPath, list: Buffer | null, size: number) => number;
  mount: (source: string | null, target: string, fstype: string | null, flags: number | bigint, data: string | null) => number;
  umount2: (target: string, flags: number) => number;
  lchown: (path: CPath, uid: number, gid: number) => number;
  utimensat: (dirfd: number, path: CPath, times: Buffer, flags: number) => number;
  futimens: (fd: number, times: Buffer) => number;
  fchmodat: (dirfd: number, path: CPath, mode: number, flags: number) => number;
  flock: (fd: number, op: number) => number;
  fanotify_init: (flags: number, eventFFlags: number) => number;
  fanotify_mark: (fd: number, flags: number, mask: number | bigint, dirfd: number, path: string | null) => number;
  syscall: (...args: unknown[]) => number | bigint;
  errno: () => number;
}

let libc: Libc | undefined;

function lib(): Libc {
  if (libc) return libc;
  const l = koffi().load('libc.so.6');
  const errnoLoc = l.func('int *__errno_location(void)');
  libc = {
    mknod: l.func('int mknod(const char *path, uint32_t mode, uint64_t dev)'),
    lsetxattr: l.func('int lsetxattr(const char *path, const char *name, const void *value, size_t size, int flags)'),
    lgetxattr: l.func('intptr_t lgetxattr(const char *path, const char *name, void *value, size_t size)'),
    llistxattr: l.func('intptr_t llistxattr(const char *path, char *list, size_t size)'),
    mount: l.func('int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const char *data)'),
    umount2: l.func('int umount2(const char *target, int flags)'),
    lchown: l.func('int lchown(const char *path, uint32_t uid, uint32_t gid)'),
    utimensat: l.func('int utimensat(int dirfd, const char *path, const void *times, int flags)'),
    futimens: l.func('int futimens(int fd, const void *times)'),
    fchmodat: l.func('int fchmodat(int dirfd, const char *path, uint32_t mode, int flags)'),
    flock: l.func('int flock(int fd, int operation)'),
    fanotify_init: l.func('int fanotify_init(unsigned int flags, unsigned int event_f_flags)'),
    fanotify_mark: l.func('int fanotify_mark(int fd, unsigned int flags, uint64_t mask, int dirfd, const char *path)'),
    syscall: l.func('long syscall(long number, ...)'),
    errno: () => koffi().decode(errnoLoc(), 'int') as number,
  };
  return libc;
}

const ERRNO_NAMES: Record<number, string> = {
  1: 'EPERM',
  2: 'ENOENT',
  5: 'EIO',
  7: 'E2BIG',
  13: 'EACCES',
  16: 'EBUSY',
  17: 'EEXIST',
  20: 'ENOTDIR',
  21: 'EISDIR',
  11: 'EAGAIN',
  22: 'EINVAL',
  28: 'ENOSPC',
  30: 'EROFS',
  34: 'ERANGE',
  36: 'ENAMETOOLONG',
  40: 'ELOOP',
  61: 'ENODATA',
  95: 'EOPNOTSUPP',
  38: 'ENOSYS',
  107: 'ENOTCONN',
  18: 'EXDEV',
  19: 'ENODEV',
  24: 'EMFILE',
  12: 'ENOMEM',
  9: 'EBADF',
};

/** An errno failure with Node-style `code` and `syscall`. */
export class SyscallError extends Error {
  readonly code: string;
  readonly errno: number;
  readonly syscall: string;
  readonly path: string;
  constructor(syscall: string, errno: number, path: PathArg) {
    const code = ERRNO_NAMES[errno] ?? `E${errno}`;
    if (typeof path !== 'string') path = printable(path);
    super(`${syscall} ${path}: ${code}`);
    this.code = code;
    this.errno = errno;
    this.syscall = syscall;
    this.path = path;
  }
}

/** A Buffer path without its terminating NUL, as text (invalid UTF-8 shown as U+FFFD). */
function printable(p: Buffer): string {
  const end = p.length > 0 && p[p.length - 1] === 0 ? p.length - 1 : p.length;
  return p.subarray(0, end).toString('utf8');
}

/** koffi passes a Buffer as a bare pointer: make sure it is NUL-terminated. */
function cpath(p: PathArg): CPath {
  if (typeof p === 'string') return p;
  return p.length > 0 && p[p.length - 1] === 0 ? p : Buffer.concat([p, ZERO]);
}
const ZERO = Buffer.alloc(1);

function check(rc: number, syscall: string, path: PathArg): number {
  if (rc < 0) throw new SyscallError(syscall, lib().errno(), path);
  return rc;
}

export const S_IFCHR = 0o020000;
export const S_IFBLK = 0o060000;
export const S_IFIFO = 0o010000;

/** glibc makedev. */
function makedev(major: number, minor: number): bigint {
  const ma = BigInt(major);
  const mi = BigInt(minor);
  return ((ma & 0xfffff000n) << 32n) | ((ma & 0xfffn) << 8n) | ((mi & 0xffffff00n) << 12n) | (mi & 0xffn);
}

export function mknod(path: PathArg, mode: number, major = 0, minor = 0): void {
  check(lib().mknod(cpath(path), mode, makedev(major, minor)), 'mknod', path);
}

/** An overlayfs whiteout: a character device 0/0. */
export function mkWhiteout(path: PathArg): void {
  mknod(path, S_IFCHR | 0o000, 0, 0);
}

export function lsetxattr(path: PathArg, name: PathArg, value: Buffer | string): void {
  const b = typeof value === 'string' ? Buffer.from(value) : value;
  check(lib().lsetxattr(cpath(path), cpath(name), b, b.length, 0), 'lsetxattr', path);
}

/** Value of an xattr, or null if the file does not have it. */
export function lgetxattr(path: PathArg, name: PathArg): Buffer | null {
  const l = lib();
  path = cpath(path);
  name = cpath(name);
  for (;;) {
    const size = l.lgetxattr(path, name, null, 0);
    if (size < 0) {
      const e = l.errno();
      if (e === 61 /* ENODATA */ || e === 95 /* EOPNOTSUPP */) return null;
      throw new SyscallError('lgetxattr', e, path);
    }
    const buf = Buffer.alloc(size);
    const got = l.lgetxattr(path, name, buf, size);
    if (got < 0) {
      const e = l.errno();
      if (e === 34 /* ERANGE: grew meanwhile */) continue;
      if (e === 61) return null;
      throw new SyscallError('lgetxattr', e, path);
    }
    return buf.subarray(0, got);
  }
}

/** xattr names of a file (not following a symlink). Names are decoded as latin1, i.e. one char per byte. */
export function llistxattr(path: PathArg): string[] {
  const l = lib();
  path = cpath(path);
  for (;;) {
    const size = l.llistxattr(path, null, 0);
    if (size < 0) {
      const e = l.errno();
      if (e === 95) return [];
      throw new SyscallError('llistxattr', e, path);
    }
    if (size === 0) return [];
    const buf = Buffer.alloc(size);
    const got = l.llistxattr(path, buf, size);
    if (got < 0) {
      if (l.errno() === 34) continue;
      throw new SyscallError('llistxattr', l.errno(), path);
    }
    return buf
      .subarray(0, got)
      .toString('latin1')
      .split('\0')
      .filter((s) => s.length > 0);
  }
}

export function lchown(path: PathArg, uid: number, gid: number): void {
  check(lib().lchown(cpath(path), uid, gid), 'lchown', path);
}

const AT_FDCWD = -100;
const AT_SYMLINK_NOFOLLOW = 0x100;
const timesBuf = Buffer.alloc(32);

function fillTimes(atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number): Buffer {
  timesBuf.writeBigInt64LE(BigInt(atimeSec), 0);
  timesBuf.writeBigInt64LE(BigInt(atimeNsec), 8);
  timesBuf.writeBigInt64LE(BigInt(mtimeSec), 16);
  timesBuf.writeBigInt64LE(BigInt(mtimeNsec), 24);
  return timesBuf;
}

/** utimensat(AT_SYMLINK_NOFOLLOW) with nanoseconds (Node's utimes goes through a double and loses them). */
export function lutimesNs(path: PathArg, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number): void {
  const t = fillTimes(atimeSec, atimeNsec, mtimeSec, mtimeNsec);
  check(lib().utimensat(AT_FDCWD, cpath(path), t, AT_SYMLINK_NOFOLLOW), 'utimensat', path);
}

/** futimens with nanoseconds. */
export function futimesNs(fd: number, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number): void {
  const t = fillTimes(atimeSec, atimeNsec, mtimeSec, mtimeNsec);
  check(lib().futimens(fd, t), 'futimens', `fd ${fd}`);
}

/**
 * chmod that never follows a symlink (fchmodat AT_SYMLINK_NOFOLLOW; glibc ≥ 2.32
 * implements it through O_PATH). Fails with EOPNOTSUPP on a symlink.
 */
export function lchmod(path: PathArg, mode: number): void {
  check(lib().fchmodat(AT_FDCWD, cpath(path), mode, AT_SYMLINK_NOFOLLOW), 'fchmodat', path);
}

export const MS_RDONLY = 1;
export const MS_NOSUID = 2;
export const MS_NODEV = 4;
export const MS_REMOUNT = 32;
export const MS_BIND = 4096;
export const MS_REC = 16384;
export const MS_SLAVE = 1 << 19;
export const MS_PRIVATE = 1 << 18;
export const MS_SHARED = 1 << 20;
export const MNT_DETACH = 2;

export function mount(source: string | null, target: string, fstype: string | null, flags: number, data: string | null): void {
  check(lib().mount(source, target, fstype, flags, data), 'mount', target);
}

export function umount(target: string, flags = 0): void {
  check(lib().umount2(target, flags), 'umount2', target);
}

// x86_64 and aarch64 share these numbers (the new mount API is in the generic table)
const SYS_OPEN_TREE = 428;
const SYS_MOVE_MOUNT = 429;
const SYS_MOUNT_SETATTR = 442;
const OPEN_TREE_CLONE = 1;
const OPEN_TREE_CLOEXEC = 0o2000000;
const AT_EMPTY_PATH = 0x1000;
const AT_RECURSIVE = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH = 4;
const AT_FDCWD_ = -100;
const MOUNT_ATTR_IDMAP = 0x00100000n;

/**
 * Bind-mount `source` on `target` as an idmapped mount (Linux ≥ 5.12;
 * open_tree + mount_setattr(MOUNT_ATTR_IDMAP) + move_mount): files owned by
 * uid/gid k on disk appear as the id that `usernsFd`'s user namespace maps k
 * to. Fails with EINVAL on file systems that do not support idmapped mounts.
 */
export function idmappedBindMount(source: string, target: string, usernsFd: number): void {
  detachedBind(source, target, { recursive: true, attrSet: MOUNT_ATTR_IDMAP, usernsFd });
}

const MOUNT_ATTR_RDONLY = 0x1n;
const MOUNT_ATTR_NOSUID = 0x2n;
const MOUNT_ATTR_NODEV = 0x4n;

/**
 * A read-only bind mount made *before* it is attached (open_tree clone →
 * mount_setattr → move_mount, Linux ≥ 5.12): with `mount --bind` + `remount,ro`
 * the copies that propagation makes in peers of a shared parent (a managed
 * plugin's propagated mount, kubelet's Bidirectional pods directory) are
 * made at bind time and stay writable; a clone attached read-only propagates
 * read-only. `recursive` takes submounts along (and makes them read-only too);
 * `propagation` is MS_SLAVE/MS_PRIVATE/MS_SHARED for the new tree.
 */
export function readonlyBindMount(source: string, target: string, opts: { recursive?: boolean; propagation?: number } = {}): void {
  detachedBind(source, target, {
    recursive: opts.recursive ?? false,
    attrSet: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
    propagation: opts.propagation ?? 0,
  });
}

function detachedBind(source: string, target: string, o: { recursive: boolean; attrSet: bigint; propagation?: number; usernsFd?: number }): void {
  const l = lib();
  const rec = o.recursive ? AT_RECURSIVE : 0;
  const fd = Number(l.syscall(SYS_OPEN_TREE, 'int', AT_FDCWD_, 'str', source, 'uint', OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | rec));
  if (fd < 0) throw new SyscallError('open_tree', l.errno(), source);
  try {
    // struct mount_attr { u64 attr_set, attr_clr, propagation, userns_fd }
    const attr = Buffer.alloc(32);
    attr.writeBigUInt64LE(o.attrSet, 0);
    attr.writeBigUInt64LE(BigInt(o.propagation ?? 0), 16);
    attr.writeBigUInt64LE(BigInt(o.usernsFd ?? 0), 24);
    const r = Number(l.syscall(SYS_MOUNT_SETATTR, 'int', fd, 'str', '', 'uint', AT_EMPTY_PATH | rec, 'void *', attr, 'size_t', 32));
    if (r < 0) throw new SyscallError('mount_setattr', l.errno(), source);
    const m = Number(l.syscall(SYS_MOVE_MOUNT, 'int', fd, 'str', '', 'int', AT_FDCWD_, 'str', target, 'uint', MOVE_MOUNT_F_EMPTY_PATH));
    if (m < 0) throw new SyscallError('move_mount', l.errno(), target);
  } finally {
    closeSync(fd);
  }
}

export const LOCK_SH = 1;
export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const LOCK_UN = 8;

/**
 * flock(2). With LOCK_NB, answers false when another open file description
 * holds a conflicting lock (EWOULDBLOCK); any other failure throws.
 */
export function flock(fd: number, op: number): boolean {
  const l = lib();
  if (l.flock(fd, op) === 0) return true;
  const e = l.errno();
  if (e === 11 /* EWOULDBLOCK */) return false;
  throw new SyscallError('flock', e, `fd ${fd}`);
}

/** fanotify(7) constants (linux/fanotify.h). */
export const FAN_CLOEXEC = 0x1;
export const FAN_NONBLOCK = 0x2;
export const FAN_CLASS_NOTIF = 0x0;
export const FAN_MARK_ADD = 0x1;
export const FAN_MARK_FILESYSTEM = 0x100;
export const FAN_OPEN = 0x20;
export const FAN_OPEN_EXEC = 0x1000;
export const FAN_Q_OVERFLOW = 0x4000;

/** fanotify_init(2): a new notification group's fd. `eventFFlags` are the open flags of the event fds. */
export function fanotifyInit(flags: number, eventFFlags: number): number {
  return check(lib().fanotify_init(flags, eventFFlags), 'fanotify_init', '');
}

/** fanotify_mark(2) on the object `dirfd` refers to (`path` null) or on `path` relative to it. */
export function fanotifyMark(fd: number, flags: number, mask: number, dirfd: number, path: string | null): void {
  check(lib().fanotify_mark(fd, flags, mask, dirfd, path), 'fanotify_mark', path ?? `fd ${dirfd}`);
}

/** syscall(2) and errno, for calls without a libc wrapper (the new mount API in core/host/overlay-mount.ts). */
export function rawSyscall(): { syscall: (...a: unknown[]) => number | bigint; errno: () => number } {
  const l = lib();
  return { syscall: l.syscall, errno: l.errno };
}
